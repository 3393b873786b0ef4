"""The one status model: every part reports events here, and everything that shows the
agent's state (CLI, console, LEDs, systemd) reads a snapshot of it. Nothing keeps its
own copy of the truth.

The running agent publishes the snapshot to ``run/status.json`` so that another process
(``edge-agent status``) reads the same model.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from agent.status_destinations import (
    Destination,
    commitment_changes,
    queue_changes,
    with_destination,
)
from agent.status_mpps import MppsQueue, mpps_summary
from agent.status_parts import ClockState, MetricsState
from agent.status_prefetch import PrefetchCounts, prefetch_summary
from agent.status_timings import Timings
from agent.tls import certificate_warning

# Seconds of silence from the housekeeping loop after which the agent reads as "not
# answering": no passed health check (the live model), or no fresh run/status.json (another
# process). The loop ticks every second and writes the file at least every few seconds
# (agent.app); its longest honest silence is a tick, a retention sweep's 5 s budget and a
# refresh period, about 11 s. Less than the systemd watchdog's 30 s, so the status says
# so before systemd restarts the agent.
STUCK_AFTER = 15.0


class State(str, Enum):
    """Life cycle of the agent process."""

    STARTING = "starting"
    SERVING = "serving"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def not_answering(silent: float) -> dict[str, Any]:
    """The fields that say the agent has been silent for ``silent`` seconds (any view)."""
    return {
        "state": State.FAILED,
        "last_error": f"not answering: nothing heard from the agent for {silent:.0f} s",
        "silent_for": round(silent, 1),
    }


@dataclass(frozen=True)
class Problem:
    """Something an operator should see, in one part of the agent, since when. It stays
    until that part recovers (``StatusModel.recovered``) or has a newer problem."""

    part: str  # receiving, tls, configuration, forwarding, housekeeping, health
    message: str
    at: str = field(default_factory=_now)


@dataclass(frozen=True)
class Snapshot:
    """A consistent copy of the status at one moment."""

    state: State = State.STARTING
    pid: int = field(default_factory=os.getpid)
    started_at: str = field(default_factory=_now)
    listening: str | None = None
    port: int | None = None
    associations: int = 0
    received: int = 0
    received_bytes: int = 0
    duplicates: int = 0
    conflicts: int = 0
    refused: int = 0
    refused_by_status: dict[str, int] = field(default_factory=dict)  # "0xA700", or "none"
    associations_rejected: dict[str, int] = field(default_factory=dict)  # per reason
    forwarded: int = 0
    last_received_at: str | None = None
    disk_free: int | None = None
    below_floor: bool = False
    disk_floor: int | None = None  # bytes: the floor below which nothing new is taken
    disk_full_in: float | None = None  # seconds to the floor at the recent ingest rate
    last_error: str | None = None  # the newest problem's message (older readers know it)
    problems: tuple[Problem, ...] = ()  # one per part at most, oldest first
    destinations: tuple[Destination, ...] = ()
    forwarder_pid: int | None = None  # the forwarding process, while one runs
    silent_for: float | None = None  # seconds of silence, once the agent is not answering
    certificate_expires: str | None = None  # the TLS certificate's notAfter (ISO 8601, UTC)
    commit_awaiting: int = 0  # delivered to a commit = true destination, not yet committed
    commit_failed: int = 0  # a destination reported it would not commit these
    commit_reports_owed: int = 0  # storage commitment transactions we still owe a report
    commit_reports_sent: int = 0
    mpps: tuple[MppsQueue, ...] = ()  # passing MPPS on, per destination (status_mpps)
    clock: ClockState = field(default_factory=lambda: ClockState())
    prefetch: PrefetchCounts = field(default_factory=PrefetchCounts)  # (status_prefetch)
    metrics: MetricsState = field(default_factory=lambda: MetricsState())
    version: int = 0

    def summary(self) -> str:
        """One line for ``systemctl status``: state, listener, counts, queue, trouble."""
        parts = [self.state.value]
        if self.listening:
            parts[0] += f" on {self.listening}"
        parts.append(f"{self.received} received")
        if self.duplicates:
            parts.append(f"{self.duplicates} duplicates")
        if self.destinations:
            waiting = sum(d.pending + d.retrying for d in self.destinations)
            parts.append(f"{self.forwarded} forwarded, {waiting} queued")
            held = sum(d.held for d in self.destinations)
            if held:
                parts.append(f"{held} held for their study")
            quarantined = sum(d.quarantined for d in self.destinations)
            if quarantined:
                parts.append(f"{quarantined} quarantined")
        parts += mpps_summary(self.mpps)
        parts += prefetch_summary(self.prefetch)
        parts += [f"{d.name} down" for d in self.destinations if d.state == "down"]
        if self.commit_awaiting or self.commit_failed:
            parts.append(f"{self.commit_awaiting} awaiting commitment")
        if self.commit_failed:
            parts.append(f"{self.commit_failed} not committed")
        if self.below_floor:
            parts.append("disk below the floor")
        warning = certificate_warning(self.certificate_expires)
        if warning:
            parts.append(warning)
        doubt = self.clock.doubt()
        if doubt:
            parts.append(doubt)
        return ", ".join(parts)

    def to_json(self) -> dict[str, Any]:
        """The snapshot as plain JSON types."""
        data = dataclasses.asdict(self)
        data["state"] = self.state.value
        return data


class StatusModel:
    """Thread-safe status; every change bumps ``version``."""

    def __init__(self) -> None:
        self._snapshot = Snapshot()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._beat: float | None = None  # monotonic time of the last passed health check
        self.timings = Timings()  # the duration histograms (not part of a snapshot)

    def snapshot(self) -> Snapshot:
        """The current status; a serving agent whose health checks stopped is not answering."""
        with self._lock:
            current, beat = self._snapshot, self._beat
        if current.state is State.SERVING and beat is not None:
            silent = time.monotonic() - beat
            if silent > STUCK_AFTER:
                return replace(current, **not_answering(silent))
        return current

    def beat(self, at: float | None = None) -> None:
        """A health check passed (``at``: monotonic time). Not news: no new version."""
        with self._lock:
            self._beat = time.monotonic() if at is None else at

    def _apply(self, change: Callable[[Snapshot], dict[str, Any]]) -> None:
        """Compute changes from the current snapshot and apply them, atomically."""
        with self._lock:
            current = self._snapshot
            changes = change(current)
            if not changes:
                return
            snapshot = dataclasses.replace(current, version=current.version + 1, **changes)
            self._snapshot = snapshot
            self._changed.notify_all()

    def wait_for_change(self, version: int, timeout: float) -> None:
        """Block until the version differs from ``version``, ``nudge`` is called, or timeout."""
        with self._changed:
            if self._snapshot.version == version:
                self._changed.wait(timeout)

    def nudge(self) -> None:
        """Wake every ``wait_for_change`` now (a reader that is closing)."""
        with self._changed:
            self._changed.notify_all()

    def set_state(self, state: State) -> None:
        """The agent entered a new life-cycle state."""
        self._apply(lambda s: {"state": state})

    def set_listening(self, host: str, port: int | None, tls_port: int | None = None) -> None:
        """The DICOM listeners are bound: the plain one, the TLS one, or both."""
        where = [f"{host}:{port}"] if port is not None else []
        where += [f"TLS {host}:{tls_port}"] if tls_port is not None else []
        listening = ", ".join(where)
        self._apply(lambda s: {"listening": listening, "port": port or tls_port})

    def owed_reports(self, pending: int, reported: int) -> None:
        """How many commitment transactions await their report, and how many were reported."""
        new = {"commit_reports_owed": pending, "commit_reports_sent": reported}
        self._apply(
            lambda s: new if (s.commit_reports_owed, s.commit_reports_sent) != (pending, reported)
            else {}
        )

    def set_associations(self, count: int) -> None:
        """How many associations are open now."""
        self._apply(lambda s: {"associations": count} if s.associations != count else {})

    def stored(self, outcome: str, size: int) -> None:
        """An instance was acknowledged: stored, a duplicate, or a kept-aside conflict."""

        def change(s: Snapshot) -> dict[str, Any]:
            if outcome == "stored":
                counts = {"received": s.received + 1, "received_bytes": s.received_bytes + size}
            elif outcome == "duplicate":
                counts = {"duplicates": s.duplicates + 1}
            else:
                counts = {"conflicts": s.conflicts + 1}
            return {"last_received_at": _now(), **counts, **_without_problem(s, RECEIVING)}

        self._apply(change)

    def refused(self, reason: str, status: int | None = None) -> None:
        """A C-STORE was answered with failure ``status`` (None: none could be sent, the
        data set was cut off or never answered); a problem until one is stored again."""
        code = "none" if status is None else f"0x{status:04X}"

        def change(s: Snapshot) -> dict[str, Any]:
            by_status = {**s.refused_by_status, code: s.refused_by_status.get(code, 0) + 1}
            problem = _with_problem(s, Problem(RECEIVING, reason))
            return {"refused": s.refused + 1, "refused_by_status": by_status, **problem}

        self._apply(change)

    def association_rejected(self, reason: str) -> None:
        """An association request was rejected, for ``reason`` (a short word: unknown-ae,
        wrong-called-ae, wrong-address, tls-only, limit, pdu-size, error)."""
        self._apply(
            lambda s: {
                "associations_rejected": {
                    **s.associations_rejected,
                    reason: s.associations_rejected.get(reason, 0) + 1,
                }
            }
        )

    def disk(
        self, free: int, below_floor: bool, floor: int | None = None,
        full_in: float | None = None,
    ) -> None:
        """Free space was measured, against ``floor``, with the time to reach it at the
        recent ingest rate (``full_in``: None when nothing is coming in); a change of a few
        bytes (or of a time to the floor by less than a tenth) is not news."""

        def change(s: Snapshot) -> dict[str, Any]:
            moved = s.disk_free is None or abs(s.disk_free - free) >= 1048576
            if moved or s.below_floor != below_floor or s.disk_floor != floor or _moved(
                s.disk_full_in, full_in
            ):
                return {
                    "disk_free": free, "below_floor": below_floor, "disk_floor": floor,
                    "disk_full_in": full_in,
                }
            return {}

        self._apply(change)

    def certificate(self, expires: str | None) -> None:
        """The TLS certificate in use (just loaded) expires then (ISO 8601; None: no TLS);
        a loaded certificate ends a TLS problem."""

        def change(s: Snapshot) -> dict[str, Any]:
            new = {"certificate_expires": expires} if s.certificate_expires != expires else {}
            return {**new, **_without_problem(s, TLS)}

        self._apply(change)

    def forwarding_process(self, pid: int | None) -> None:
        """The forwarding process started (its pid) or ended (None); one that answers ends
        a forwarding problem."""

        def change(s: Snapshot) -> dict[str, Any]:
            new = {"forwarder_pid": pid} if s.forwarder_pid != pid else {}
            return {**new, **(_without_problem(s, FORWARDING) if pid is not None else {})}

        self._apply(change)

    def forwarded(self, name: str, seconds: float | None = None) -> None:
        """An instance reached ``name`` (its C-STORE took ``seconds``): its last error is
        over."""
        if seconds is not None:
            self.timings.delivery.labels(name).observe(seconds)
        self._apply(
            lambda s: {
                "forwarded": s.forwarded + 1,
                **with_destination(
                    s.destinations, name, last_success=_now(), last_error=None,
                    delivered=_destination(s, name).delivered + 1, last_delivery=time.time(),
                ),
            }
        )

    def forward_failed(self, name: str, error: str) -> None:
        """An attempt to deliver to ``name`` failed."""
        self._apply(
            lambda s: with_destination(
                s.destinations, name, last_error=f"{_now()} {error}",
                failed=_destination(s, name).failed + 1,
            )
        )

    def destination_state(
        self, name: str, down_since: float | None, error: str | None, next_probe: float | None
    ) -> None:
        """``name`` is up (``down_since`` None), or down since then (epoch seconds), for
        ``error``, with one association trying again at ``next_probe``."""
        if down_since is None:
            fields: dict[str, Any] = {
                "state": "up", "down_since": None, "down_error": None, "next_probe": None
            }
        else:
            fields = {
                "state": "down",
                "down_since": _iso_seconds(down_since),
                "down_error": error,
                "next_probe": None if next_probe is None else _iso_seconds(next_probe),
            }
        self._apply(lambda s: with_destination(s.destinations, name, **fields))

    def destination_pace(
        self, name: str, window: str | None, window_open: bool, cap: int | None
    ) -> None:
        """``name``'s send windows as they stand (in words; None: it has none), whether its
        queue may go now, and its bandwidth cap (``agent.forward.windows``)."""
        def change(s: Snapshot) -> dict[str, Any]:
            current = _destination(s, name)
            if (current.window, current.window_open, current.max_bytes_per_second) == (
                    window, window_open, cap):
                return {}
            return with_destination(s.destinations, name, window=window,
                                    window_open=window_open, max_bytes_per_second=cap)

        self._apply(change)

    def destination_throttled(self, name: str, throttled: bool) -> None:
        """Writes to ``name`` wait for its bandwidth cap now, or no longer do."""
        self._apply(lambda s: {} if _destination(s, name).throttled == throttled
                    else with_destination(s.destinations, name, throttled=throttled))

    def queue_depth(
        self, depth: dict[str, dict[str, int]], names: tuple[str, ...],
        waiting: dict[str, tuple[int, float | None]] | None = None,
    ) -> None:
        """Job counts per destination and state, as the queue holds them now, and (if
        given) the bytes waiting and the arrival time of the oldest waiting instance."""
        self._apply(lambda s: queue_changes(s.destinations, depth, names, waiting or {}))

    def mpps_queue(self, queues: tuple[MppsQueue, ...]) -> None:
        """MPPS messages waiting or quarantined per destination, as the queue holds them."""
        self._apply(lambda s: {} if s.mpps == queues else {"mpps": queues})

    def prefetch(self, counts: PrefetchCounts) -> None:
        """Prefetch jobs per state, and what they fetched (``agent.status_prefetch``)."""
        self._apply(lambda s: {} if s.prefetch == counts else {"prefetch": counts})

    def destination_commitments(self, counts: dict[str, dict[str, int]]) -> None:
        """Storage commitment rows per destination and state, as the archive holds them."""
        outstanding = {
            name: c.get("awaiting", 0) + c.get("requested", 0) for name, c in counts.items()
        }
        awaiting = sum(outstanding.values())
        failed = sum(c.get("failed", 0) for c in counts.values())

        def change(s: Snapshot) -> dict[str, Any]:
            totals = (
                {} if (s.commit_awaiting, s.commit_failed) == (awaiting, failed)
                else {"commit_awaiting": awaiting, "commit_failed": failed}
            )
            return {**totals, **commitment_changes(s.destinations, outstanding)}

        self._apply(change)

    def clock_state(self, clock: ClockState) -> None:
        """What the agent now knows of the system clock (``agent.timekeeping``)."""
        self._apply(lambda s: {} if s.clock == clock else {"clock": clock})

    def metrics_state(self, metrics: MetricsState) -> None:
        """The metrics endpoint started, stopped, or was scraped."""
        self._apply(lambda s: {} if s.metrics == metrics else {"metrics": metrics})

    def error(self, message: str, part: str = "agent") -> None:
        """Something went wrong in ``part`` that an operator should see, until that part
        recovers (``recovered``) or has a newer problem."""
        self._apply(lambda s: _with_problem(s, Problem(part, message)))

    def recovered(self, part: str) -> None:
        """``part`` works again: its problem is over (nothing changes if it had none)."""
        self._apply(lambda s: _without_problem(s, part))


RECEIVING, TLS, FORWARDING = "receiving", "tls", "forwarding"


def _with_problem(s: Snapshot, problem: Problem) -> dict[str, Any]:
    """The fields with ``problem`` replacing any earlier one of its part."""
    problems = (*(p for p in s.problems if p.part != problem.part), problem)
    return {"problems": problems, "last_error": problem.message}


def _without_problem(s: Snapshot, part: str) -> dict[str, Any]:
    """The fields without ``part``'s problem; nothing if it had none."""
    if all(p.part != part for p in s.problems):
        return {}
    problems = tuple(p for p in s.problems if p.part != part)
    return {"problems": problems, "last_error": problems[-1].message if problems else None}


def _destination(s: Snapshot, name: str) -> Destination:
    """``name`` as the snapshot has it (a new one if it has none yet)."""
    return next((d for d in s.destinations if d.name == name), Destination(name))


def _iso_seconds(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).isoformat(timespec="seconds")


def _moved(old: float | None, new: float | None) -> bool:
    """True if a time-to-the-floor changed enough to be news (by a tenth, or to/from None)."""
    if old is None or new is None:
        return old is not new
    return abs(old - new) > 0.1 * max(abs(old), 1.0)
