"""Prefetch in the one status model: how many jobs are queued, running, retrying,
failed and done, and what they fetched (``agent.prefetch.worker`` tells it each
housekeeping tick). Kept out of agent/status.py, which holds only the field and the
method that set it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class PrefetchCounts:
    """Prefetch jobs per state, and the studies and bytes they landed (all of them)."""

    queued: int = 0
    running: int = 0
    retrying: int = 0  # a transient failure: tried again later
    failed: int = 0  # given up (edge-agent queue says why)
    done: int = 0
    studies: int = 0
    bytes: int = 0


def prefetch_counts(counts: Mapping[str, int]) -> PrefetchCounts:
    """From ``agent.archive.prefetch_jobs.read_counts``."""
    return PrefetchCounts(**{f.name: int(counts.get(f.name, 0)) for f in fields(PrefetchCounts)})


def prefetch_summary(counts: PrefetchCounts) -> list[str]:
    """The systemd status line's words for prefetch: what waits or runs, what failed."""
    waiting = counts.queued + counts.running + counts.retrying
    parts = [f"{waiting} prefetches queued"] if waiting else []
    return parts + ([f"{counts.failed} prefetches failed"] if counts.failed else [])
