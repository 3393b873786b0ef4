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

from collections.abc import Sequence

from pydicom import uid
from pynetdicom.presentation import PresentationContext, build_context

from agent.dicom import codecs
from agent.dicom.contexts import MAX_CONTEXTS, UNCOMPRESSED

AS_STORED = "as-stored"
CHOICES: dict[str, str | None] = {
    AS_STORED: None,
    "jpeg-ls-lossless": uid.JPEGLSLossless,
    "deflate": uid.DeflatedExplicitVRLittleEndian,
    "rle": uid.RLELossless,
    "explicit-little": uid.ExplicitVRLittleEndian,
}


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
