"""Durations as a person says them, for log lines, `status`, `queue` and the console."""

from __future__ import annotations


def duration_words(seconds: float) -> str:
    """A duration as a person says it: 0.2 s, 45 s, 3 min 12 s, 2 h 5 min, 3 d 4 h."""
    if 0 < seconds < 9.95 and round(seconds, 1) != round(seconds):
        return f"{seconds:.1f} s"
    whole = max(0, round(seconds))
    for unit, size, smaller, small_size in (
        ("d", 86400, "h", 3600), ("h", 3600, "min", 60), ("min", 60, "s", 1)
    ):
        if whole >= size:
            rest = (whole % size) // small_size
            return f"{whole // size} {unit}" + (f" {rest} {smaller}" if rest else "")
    return f"{whole} s"
