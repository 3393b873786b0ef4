"""Which arrivals queue a prefetch: the ``[[prefetch]]`` rules of the configuration in
force, given to the archive as its ``Prefetching`` (as ``ConfiguredRouting`` is its
routing), and which rule a queued job is run by."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from agent.archive.prefetch_jobs import HAND, Job
from agent.config import Config
from agent.prefetch.settings import ANY, PrefetchRule


class ConfiguredPrefetching:
    """The archive's ``Prefetching``: rules read per arrival (a reload applies at once);
    ``listen`` names who is woken once a job is committed (the worker, built after the
    archive, whose start-up recovery may queue jobs before anyone listens)."""

    def __init__(self, current: Callable[[], Config]) -> None:
        self.current = current
        self._wake: Callable[[], None] = lambda: None

    def listen(self, wake: Callable[[], None]) -> None:
        """Wake ``wake`` from now on when a job is queued."""
        self._wake = wake

    def priors_from(self, calling_ae: str) -> tuple[str, ...]:
        """The peers a new study (or MPPS) from ``calling_ae`` pulls priors from: those of
        the rules whose ``from`` names its peer, each once; never the sender itself."""
        config = self.current()
        peer = config.peer_by_ae(calling_ae)
        if peer is None:
            return ()
        return tuple(dict.fromkeys(
            rule.priors_from for rule in config.prefetch
            if peer.name in rule.from_peers and rule.priors_from != peer.name
        ))

    def queued(self) -> None:
        """A job was committed: wake the worker."""
        self._wake()


def rule_for(config: Config, job: Job) -> PrefetchRule | None:
    """The rule in force a job runs by: the first whose ``priors_from`` is the job's and
    whose ``from`` names the peer that sent the trigger. A job by hand takes the first
    rule with its ``priors_from`` (its limits and window, any modality: there is no
    trigger study to be "same" as), else the defaults. None: a triggered job whose rule
    a reload removed."""
    sender = config.peer_by_ae(job.source)
    for rule in config.prefetch:
        if rule.priors_from != job.priors_from:
            continue
        if job.trigger == HAND:
            return rule if isinstance(rule.modality, tuple) else _any_modality(rule)
        if sender is not None and sender.name in rule.from_peers:
            return rule
    if job.trigger == HAND:
        return PrefetchRule((), job.priors_from, modality=ANY)
    return None


def _any_modality(rule: PrefetchRule) -> PrefetchRule:
    return replace(rule, modality=ANY)
