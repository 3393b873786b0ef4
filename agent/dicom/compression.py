"""A destination's ``transfer_syntax``: what to send it in, in order of preference, and the
presentation contexts that lets its association choose among.

    transfer_syntax = ["jpeg-ls-lossless", "as-stored"]   # or one string
    verify_lossless = false

"as-stored" (the default) sends each file as it is. The others name a syntax an
uncompressed instance is converted to (agent/dicom/transcode.py) when the destination
accepts it; what it does not accept, or an instance cannot be converted to, falls back
to the next, and after the last to the stored syntax (or decompressed, as for any peer).
Lossy data is never re-encoded: it goes as stored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydicom import uid
from pynetdicom.presentation import PresentationContext, build_context

from agent import validation as v
from agent.dicom import codecs
from agent.dicom.contexts import MAX_CONTEXTS, UNCOMPRESSED
from agent.errors import ConfigError

AS_STORED = "as-stored"
KEYS = ("transfer_syntax", "verify_lossless")  # a peer's keys here
CHOICES: dict[str, str | None] = {
    AS_STORED: None,
    "jpeg-ls-lossless": uid.JPEGLSLossless,
    "deflate": uid.DeflatedExplicitVRLittleEndian,
    "rle": uid.RLELossless,
    "explicit-little": uid.ExplicitVRLittleEndian,
}


def parse(table: Mapping[str, Any], where: str) -> dict[str, Any]:
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


def targets(choices: Sequence[str], stored: str) -> list[str]:
    """The syntaxes to send an instance stored in ``stored`` in, best first; the stored
    one is always among them (last if the choices do not name it). Lossy data: as stored.
    """
    if stored in codecs.LOSSY:
        return [stored]
    wanted: list[str] = []
    for choice in choices:
        syntax = CHOICES[choice] or stored
        if syntax not in wanted:
            wanted.append(syntax)
    if stored not in wanted:
        wanted.append(stored)
    return wanted


def per_pair(choices: Sequence[str]) -> int:
    """How many contexts are proposed at most per (SOP class, stored syntax)."""
    return 2 if tuple(choices) == (AS_STORED,) else len(choices) + 2


def contexts(
    pairs: Sequence[tuple[str, str]], choices: Sequence[str]
) -> list[PresentationContext]:
    """Per (SOP class, stored syntax): one context for each target syntax alone, so the
    destination says which it takes, then the uncompressed ones together (a fallback).
    Each (SOP class, syntax) is proposed once; at most 128 contexts."""
    proposed: list[PresentationContext] = []
    seen: set[tuple[str, ...]] = set()
    for sop_class, stored in sorted(set(pairs)):
        wanted = [[s] for s in targets(choices, stored)]
        for syntaxes in [*wanted, [s for s in UNCOMPRESSED if [s] not in wanted]]:
            key = (sop_class, *syntaxes)
            if len(syntaxes) and key not in seen:
                seen.add(key)
                proposed.append(build_context(sop_class, syntaxes))
    return proposed[:MAX_CONTEXTS]
