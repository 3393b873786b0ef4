"""Routing: which destinations an instance goes to, decided once, when it arrives."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pydicom.dataset import Dataset

from agent.archive import wildcard
from agent.archive.keys import as_text
from agent.config import Config
from agent.forward.settings import CALLING_AE, COMPLETE, ForwardSettings, Rule


def route(settings: ForwardSettings, header: Dataset, calling_ae: str) -> tuple[str, ...]:
    """Destinations for an instance: ``forward.to`` plus every matching rule's, in order."""
    return tuple(route_when(settings, header, calling_ae))


def route_when(settings: ForwardSettings, header: Dataset, calling_ae: str) -> dict[str, str]:
    """Each destination of an instance, in order, with when it goes (``forward.when`` or
    the ``when`` of the first rule that names it)."""
    chosen = dict.fromkeys(settings.to, settings.when)
    for rule in settings.rules:
        if matches(rule, header, calling_ae):
            for name in rule.to:
                chosen.setdefault(name, rule.when)
    return chosen


def nobody(destinations: Sequence[str]) -> None:
    """Tell no one that jobs were queued (a process whose forwarder reads the queue itself)."""


class ConfiguredRouting:
    """The archive's routing (``agent.archive.archive.Routing``) by the configuration in
    force: ``route``, minus the peer the instance came from, and a wake-up for whoever
    delivers. A reload changes the rules here, through ``current``; the archive keeps the
    same collaborator for its whole life.

    An instance is never sent back to the AE that sent it: a study pulled from the PACS
    (by C-MOVE or C-GET) must not be forwarded to that PACS again.
    """

    def __init__(
        self, current: Callable[[], Config], wake: Callable[[Sequence[str]], None] = nobody
    ) -> None:
        self.current = current
        self._wake = wake

    def destinations(self, header: Dataset, calling_ae: str) -> tuple[str, ...]:
        """Where an instance from ``calling_ae`` goes."""
        config = self.current()
        chosen = route(config.forward, header, calling_ae)
        return tuple(name for name in chosen if config.peers[name].ae_title != calling_ae)

    def per_study(self, header: Dataset, calling_ae: str) -> frozenset[str]:
        """Which of its destinations wait for the instance's study to be complete
        (``when = "complete"``)."""
        chosen = route_when(self.current().forward, header, calling_ae)
        return frozenset(name for name, when in chosen.items() if when == COMPLETE)

    def queued(self, destinations: Sequence[str]) -> None:
        """Jobs were committed (or released, a study being complete) for these
        destinations: wake their senders."""
        self._wake(destinations)


def matches(rule: Rule, header: Dataset, calling_ae: str) -> bool:
    """True if every pattern of the rule matches (``*`` and ``?``, case-sensitive)."""
    for keyword, pattern in rule.match.items():
        value = calling_ae if keyword == CALLING_AE else _text(header, keyword)
        if not wildcard.matches(pattern, value):
            return False
    return True


def _text(header: Dataset, keyword: str) -> str:
    value = header.get(keyword)
    return "" if value is None else as_text(value)
