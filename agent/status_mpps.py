"""Passing MPPS on (``forward.mpps_to``) in the one status model: per destination, how
many N-CREATE and N-SET messages wait, are retried, or were quarantined.

A quarantined message is a fault, as a quarantined instance is: the systemd status line
counts it and the fault LED blinks (agent/field/patterns.py). Kept out of
agent/status.py, which holds only the field and the method that set it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class MppsQueue:
    """MPPS messages for one destination not yet passed on, as the operator sees them."""

    name: str
    waiting: int = 0  # never tried yet
    retrying: int = 0  # tried and failed; tried again after a back-off
    quarantined: int = 0  # refused for good (or behind such a message of its step)


def mpps_queues(
    depth: Mapping[str, Mapping[str, int]], names: Iterable[str]
) -> tuple[MppsQueue, ...]:
    """One entry per destination in ``names`` (those configured) or with messages in
    ``depth`` (agent.archive.mpps.depth: counts per destination and state), by name."""
    return tuple(
        MppsQueue(
            name,
            waiting=depth.get(name, {}).get("waiting", 0),
            retrying=depth.get(name, {}).get("retrying", 0),
            quarantined=depth.get(name, {}).get("quarantined", 0),
        )
        for name in sorted(set(names) | set(depth))
    )


def mpps_summary(queues: Iterable[MppsQueue]) -> list[str]:
    """The systemd status line's words for MPPS: what waits, and what is quarantined."""
    listed = list(queues)
    waiting = sum(q.waiting + q.retrying for q in listed)
    quarantined = sum(q.quarantined for q in listed)
    parts = [f"{waiting} MPPS queued"] if waiting else []
    return parts + ([f"{quarantined} MPPS quarantined"] if quarantined else [])


def mpps_quarantined(queues: Iterable[MppsQueue]) -> bool:
    """Any MPPS message is quarantined (a fault)."""
    return any(q.quarantined for q in queues)
