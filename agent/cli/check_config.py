"""``edge-agent check-config``: validate the configuration and summarise it."""

from __future__ import annotations

import argparse

from agent import tls
from agent.cli.common import load_config
from agent.config import Config

NAME = "check-config"
HELP = "validate the configuration file and print what it sets up"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options beyond the common ones."""


def run(args: argparse.Namespace) -> int:
    """Exit 0 with a summary if the configuration is valid (errors exit 2 in main)."""
    config = load_config(args)
    agent = config.agent
    print(f"OK {config.source or 'built-in default'}")
    plain = f"{agent.bind}:{agent.port}" if agent.plain_listener else "no plain port"
    print(f"  AE title {agent.ae_title}, listening on {plain}")
    _print_tls(config)
    print(f"  data in {agent.data_dir} (refuse new images below {agent.min_free_mb} MB free)")
    if agent.allow_unknown:
        print(f"  unknown AEs may: {', '.join(sorted(agent.allow_unknown))}")
    else:
        print("  unknown AEs are rejected")
    for peer in config.peers.values():
        allowed = ", ".join(sorted(peer.allow)) or "nothing"
        over = " over TLS" if peer.tls else ""
        print(f"  peer {peer.name}: {peer.ae_title}@{peer.host}:{peer.port}{over} may {allowed}")
    return 0


def _print_tls(config: Config) -> None:
    """Load the TLS files as the agent will (ConfigError naming the key if unusable)."""
    if config.tls is None:
        return
    contexts = tls.load(config.tls)
    print(
        f"  TLS on {config.agent.bind}:{config.tls.port}, TLS {config.tls.min_version} or later;"
        f" certificate valid until {contexts.not_after:%Y-%m-%d}"
        f" ({tls.days_left(contexts.not_after)} days)"
    )
