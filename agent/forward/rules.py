"""Routing: which destinations an instance goes to, decided once, when it arrives."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pydicom.dataset import Dataset

from agent.archive import wildcard
from agent.archive.keys import as_text
from agent.forward.settings import CALLING_AE, ForwardSettings, Rule


def route(settings: ForwardSettings, header: Dataset, calling_ae: str) -> tuple[str, ...]:
    """Destinations for an instance: ``forward.to`` plus every matching rule's, in order."""
    chosen: list[str] = list(settings.to)
    for rule in settings.rules:
        if matches(rule, header, calling_ae):
            chosen += [name for name in rule.to if name not in chosen]
    return tuple(chosen)


def router_for(
    settings: ForwardSettings, peers: Mapping[str, Any]
) -> Callable[[Dataset, str], tuple[str, ...]]:
    """The archive's router: ``route``, minus the peer the instance came from.

    An instance is never sent back to the AE that sent it: a study pulled from the PACS
    (by C-MOVE or C-GET) must not be forwarded to that PACS again.
    """

    def router(header: Dataset, calling_ae: str) -> tuple[str, ...]:
        chosen = route(settings, header, calling_ae)
        return tuple(name for name in chosen if peers[name].ae_title != calling_ae)

    return router


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
