"""Routing: which destinations an instance goes to, decided once, when it arrives."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pydicom.dataset import Dataset

from agent.archive import wildcard
from agent.archive.keys import as_text
from agent.config import Config
from agent.forward.settings import CALLING_AE, ForwardSettings, Rule


def route(settings: ForwardSettings, header: Dataset, calling_ae: str) -> tuple[str, ...]:
    """Destinations for an instance: ``forward.to`` plus every matching rule's, in order."""
    chosen: list[str] = list(settings.to)
    for rule in settings.rules:
        if matches(rule, header, calling_ae):
            chosen += [name for name in rule.to if name not in chosen]
    return tuple(chosen)


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

    def queued(self, destinations: Sequence[str]) -> None:
        """Jobs were committed for these destinations: wake their senders."""
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
