"""The status model's forwarding part: each destination as the operator (and the metrics
endpoint) sees it, and how the model's events change the tuple of them. Kept apart from
``agent/status.py``, which holds the fields and the methods that set them."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Destination:
    """Forwarding to one peer, as the operator sees it."""

    name: str
    pending: int = 0
    retrying: int = 0
    quarantined: int = 0
    held: int = 0  # forward.when = "complete": waiting for their study to be complete
    last_success: str | None = None
    last_error: str | None = None
    # reachability, as the forwarding process last reported it (agent.forward.gate)
    state: str = "up"  # or "down": no association could be set up; jobs wait for it
    down_since: str | None = None  # ISO 8601, UTC
    down_error: str | None = None  # why, in words
    next_probe: str | None = None  # ISO 8601, UTC: when one association tries again
    # since the agent started: instances delivered, attempts that failed
    delivered: int = 0
    failed: int = 0
    waiting_bytes: int = 0  # the size of the instances waiting (pending, retrying, held)
    oldest_waiting: float | None = None  # epoch seconds: the oldest waiting one's arrival
    last_delivery: float | None = None  # epoch seconds of the last delivery
    commit_outstanding: int = 0  # delivered, its storage commitment not yet reported
    # its pace (agent/forward/windows.py): why its queue waits, or how its windows stand
    # ("outside its send windows (22:00-06:00); opens at 22:00"; None: no windows)...
    window: str | None = None
    window_open: bool = True  # False: its jobs wait for the window (priority ones excepted)
    max_bytes_per_second: int | None = None  # ...and its bandwidth cap (None: none)
    throttled: bool = False  # the cap holds its writes back now

    @property
    def waiting(self) -> int:
        """Instances not yet delivered that will be tried (quarantined ones will not)."""
        return self.pending + self.retrying + self.held


Destinations = tuple[Destination, ...]


def with_destination(destinations: Destinations, name: str, **changes: Any) -> dict[str, Any]:
    """The ``destinations`` field with one destination changed (added if new)."""
    found = [d for d in destinations if d.name == name]
    current = found[0] if found else Destination(name)
    updated = replace(current, **changes)
    others = [d for d in destinations if d.name != name]
    return {"destinations": tuple(sorted([*others, updated], key=lambda d: d.name))}


def queue_changes(
    destinations: Destinations,
    depth: dict[str, dict[str, int]],
    names: tuple[str, ...],
    waiting: dict[str, tuple[int, float | None]],
) -> dict[str, Any]:
    """The ``destinations`` field with each named destination's job counts (``depth``:
    per state), bytes waiting and oldest arrival (``waiting``); nothing if none changed."""
    updated = destinations
    for name in names:
        counts = depth.get(name, {})
        size, oldest = waiting.get(name, (0, None))
        updated = with_destination(
            updated,
            name,
            pending=counts.get("pending", 0),
            retrying=counts.get("retrying", 0),
            quarantined=counts.get("quarantined", 0),
            held=counts.get("held", 0),
            waiting_bytes=size,
            oldest_waiting=oldest,
        )["destinations"]
    return {} if updated == destinations else {"destinations": updated}


def commitment_changes(
    destinations: Destinations, outstanding: dict[str, int]
) -> dict[str, Any]:
    """The ``destinations`` field with each destination's outstanding commitments."""
    updated = destinations
    for name in {d.name for d in destinations} | set(outstanding):
        updated = with_destination(
            updated, name, commit_outstanding=outstanding.get(name, 0)
        )["destinations"]
    return {} if updated == destinations else {"destinations": updated}
