"""``edge-agent check-config``: validate the configuration and summarise it.

Everything is checked before anything is printed: every error of the file at once, then
the TLS files as the agent will load them. "OK" means the agent would start with it.
"""

from __future__ import annotations

import argparse

from agent import tls
from agent.cli.common import load_config
from agent.config import Config, Peer, StudySettings
from agent.errors import ConfigErrors
from agent.forward.settings import ForwardSettings

NAME = "check-config"
HELP = "validate the configuration file and print what it sets up"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options beyond the common ones."""


def run(args: argparse.Namespace) -> int:
    """Exit 0 with a summary if the configuration is valid (errors exit 2 in main)."""
    config = load_config(args)  # ConfigErrors with every error of the file
    contexts = None
    if config.tls is not None:
        errors = tls.check(config.tls)
        if errors:
            raise ConfigErrors(errors)
        contexts = tls.load(config.tls)
    print(f"OK {config.source or 'built-in default'}")
    print("\n".join(summary(config, contexts)))
    exposed = tls.key_exposure(config.tls) if config.tls is not None else None
    if exposed:
        print(f"WARNING {exposed}")
    return 0


def summary(config: Config, contexts: tls.Contexts | None = None) -> list[str]:
    """What the configuration sets up: listeners, data, who may do what, forwarding."""
    agent = config.agent
    plain = f"{agent.bind}:{agent.port}" if agent.plain_listener else "no plain port"
    lines = [f"  AE title {agent.ae_title}, listening on {plain}"]
    if contexts is not None and config.tls is not None:
        lines.append(
            f"  TLS on {agent.bind}:{config.tls.port}, TLS {config.tls.min_version} or later;"
            f" certificate valid until {contexts.not_after:%Y-%m-%d}"
            f" ({tls.days_left(contexts.not_after)} days)"
        )
    lines.append(
        f"  data in {agent.data_dir} (refuse new images below {agent.min_free_mb} MB free)"
    )
    if agent.allow_unknown:
        lines.append(f"  unknown AEs may: {', '.join(sorted(agent.allow_unknown))}")
    else:
        lines.append("  unknown AEs are rejected")
    for peer in config.peers.values():
        if peer.web is not None:  # a DICOMweb destination (agent/web)
            lines.append(f"  peer {peer.name}: DICOMweb {peer.web.url}, auth {peer.web.auth};"
                         " a STOW-RS destination")
            continue
        allowed = ", ".join(sorted(peer.allow)) or "nothing"
        over = " over TLS" if peer.tls else ""
        commit = ", asked for storage commitment" if peer.commit else ""
        quiet = (
            "" if peer.quiet_seconds is None else f", its studies quiet after {quiet_words(peer)}"
        )
        lines.append(
            f"  peer {peer.name}: {peer.ae_title}@{peer.host}:{peer.port}{over} may {allowed}"
            f"{commit}{quiet}"
        )
    return lines + studies(config.study) + forwarding(config.forward) + metrics(config)


def metrics(config: Config) -> list[str]:
    """The ``[metrics]`` table in words: where the endpoint listens, and who may read it."""
    settings = config.metrics
    if settings is None:
        return ["  metrics endpoint: off (no [metrics] port)"]
    scheme = "https" if settings.tls else "http"
    token = "a bearer token" if settings.token_file else "no token"
    where = "" if settings.loopback else "; reachable from the network"
    return [f"  metrics on {scheme}://{settings.bind}:{settings.port}/metrics and /healthz, "
            f"{token} required{where}"]


def quiet_words(peer: Peer) -> str:
    """A peer's own quiet period, in words (0: switched off)."""
    seconds = peer.quiet_seconds or 0
    return f"{seconds:g} s" if seconds else "never (quiet rule off)"


def studies(study: StudySettings) -> list[str]:
    """The ``[study]`` table in words: when a study is complete without better evidence."""
    quiet = (
        f"{study.quiet_seconds:g} s after its last instance"
        if study.quiet_seconds else "never by a quiet period (quiet_seconds = 0)"
    )
    return [
        f"  a study is complete by MPPS or commitment request, else {quiet}; an MPPS still "
        f"missing instances after {study.give_up_hours:g} h completes it with them listed"
    ]


def forwarding(forward: ForwardSettings) -> list[str]:
    """The ``[forward]`` table in words."""
    mpps = (
        [f"  pass every MPPS N-CREATE and N-SET on to {', '.join(forward.mpps_to)}, in order "
         "(retried and quarantined as instances are)"]
        if forward.mpps_to else []
    )
    if not forward.destinations:
        return ["  forwarding: none (no [forward] destinations)", *mpps]
    lines = [f"  forward every instance to {', '.join(forward.to)}"] if forward.to else []
    for number, rule in enumerate(forward.rules, 1):
        match = ", ".join(f"{key} = {pattern}" for key, pattern in rule.match.items())
        lines.append(f"  forward rule {number}: where {match or 'anything'}, also to "
                     f"{', '.join(rule.to)}")
    keep = "removed once delivered" if forward.keep_days == 0 else (
        f"kept {forward.keep_days:g} days after delivery"
    )
    lines.append(
        f"  forward retries after {forward.retry_first:g} s, doubling up to "
        f"{forward.retry_max:g} s; a permanent failure {forward.permanent_tries} times, then "
        f"quarantined; {forward.associations} associations per destination"
    )
    lines.append(
        f"  forwarded instances {keep}"
        + (", and not before committed" if forward.retain_until == "committed" else "")
    )
    return lines + mpps
