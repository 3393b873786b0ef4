"""A destination's link keys, ``transfer_syntax`` and ``verify_lossless``, validated at load
(what they mean and the contexts they make: agent/dicom/compression.py).

    transfer_syntax = ["jpeg-ls-lossless", "as-stored"]   # or one string
    verify_lossless = false
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent import validation as v
from agent.dicom.compression import AS_STORED, CHOICES
from agent.errors import ConfigError

LINK_KEYS = ("transfer_syntax", "verify_lossless")  # a peer's keys here


def parse_link(table: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A peer's ``transfer_syntax`` (a string or a list of them) and ``verify_lossless``."""
    return {
        "transfer_syntax": _choices(table, f"{where}.transfer_syntax"),
        "verify_lossless": v.get(table, f"{where}.verify_lossless", bool, False, None),
    }


def _choices(table: Mapping[str, Any], key: str) -> tuple[str, ...]:
    raw = v.get(table, key, (str, list), AS_STORED, None)
    given = [raw] if isinstance(raw, str) else list(raw)
    names = ", ".join(CHOICES)
    if not given:
        v.problem(ConfigError(key, f"names at least one of {names}"))
        return (AS_STORED,)
    for choice in given:
        if not isinstance(choice, str) or choice not in CHOICES:
            v.problem(ConfigError(key, f"{choice!r} is not one of {names}"))
            return (AS_STORED,)
    if len(set(given)) != len(given):
        v.problem(ConfigError(key, "names a syntax twice"))
    return tuple(given)
