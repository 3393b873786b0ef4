"""DICOM wildcard matching ('*' any run, '?' one character) that cannot backtrack.

A regular expression with one '.*' per '*' backtracks: ``*A*A*A*A*A*A*A*B`` against a
64-character value took 20 s. Here the pattern is split at each '*' into segments;
the first must start the value, the last must end it, and each one between is taken
at its leftmost place after the one before. Leftmost is always safe for a run of
'*'-separated segments, so no choice is ever undone: the cost is at most the value's
length times the pattern's, whatever the pattern.
"""

from __future__ import annotations

from collections.abc import Callable

Matcher = Callable[[str], bool]


def _fits(text: str, at: int, segment: str) -> bool:
    """True if ``segment`` ('?' matching any character) stands in ``text`` at ``at``."""
    if at < 0 or at + len(segment) > len(text):
        return False
    window = text[at : at + len(segment)]
    return all(p == "?" or p == c for p, c in zip(segment, window, strict=True))


def _leftmost(text: str, segment: str, start: int, stop: int) -> int:
    """The first place in [start, stop - len(segment)] where ``segment`` fits, or -1."""
    if "?" not in segment:
        return text.find(segment, start, stop)
    for at in range(start, stop - len(segment) + 1):
        if _fits(text, at, segment):
            return at
    return -1


def matches(pattern: str, text: str) -> bool:
    """True if ``text`` matches the DICOM wildcard ``pattern`` as a whole."""
    if "*" not in pattern:
        return len(pattern) == len(text) and _fits(text, 0, pattern)
    head, *middle, tail = pattern.split("*")
    if len(text) < len(head) + len(tail) + sum(map(len, middle)):
        return False
    end = len(text) - len(tail)
    if not (_fits(text, 0, head) and _fits(text, end, tail)):
        return False
    position = len(head)
    for segment in middle:
        found = _leftmost(text, segment, position, end)
        if found < 0:
            return False
        position = found + len(segment)
    return True


def matcher(pattern: str, *, ignore_case: bool = False) -> Matcher:
    """A one-argument test for ``pattern``, case-folded on both sides if asked."""
    if ignore_case:
        folded = pattern.upper()
        return lambda text: matches(folded, text.upper())
    return lambda text: matches(pattern, text)
