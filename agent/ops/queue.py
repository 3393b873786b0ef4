"""The forward queue: what waits to be forwarded, and re-arming or purging it.

Changes take effect at the senders' next look (seconds).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.archive import Layout, mpps
from agent.archive import outbox as queue
from agent.archive.index import Index
from agent.archive.outbox import Outbox
from agent.archive.pacs_commits import STATES, Failure, PacsCommits
from agent.archive.prefetch_jobs import PrefetchQueue
from agent.errors import AgentError
from agent.ops.prefetch import prefetch_lines, prefetch_state
from agent.ops.reachability import pace_line, reported_destinations, state_line
from agent.status import Snapshot

SHOWN = 50
NO_ARCHIVE = "queue empty (no archive yet)"
MPPS_STATES = (mpps.WAITING, mpps.RETRYING, mpps.QUARANTINED, mpps.DONE)


@dataclass(frozen=True)
class MppsRow:
    """An MPPS message that failed or was quarantined: which step, which message, why;
    never its attributes (they name the patient)."""

    seq: int  # its place in the order messages were taken
    destination: str
    step_uid: str
    kind: str  # N-CREATE or N-SET
    state: str  # quarantined, or retrying
    attempts: int
    next_attempt: float
    last_error: str | None

    @classmethod
    def of(cls, job: mpps.Job) -> MppsRow:
        """The row for a queued job, its message left out."""
        state = mpps.RETRYING if job.state == mpps.PENDING else job.state
        return cls(job.seq, job.destination, job.step_uid, job.kind, state, job.attempts,
                   job.next_attempt, job.last_error)


@dataclass(frozen=True)
class QueueListing:
    """Job counts per destination and state, and the first waiting jobs."""

    depth: dict[str, dict[str, int]]
    rows: tuple[queue.QueueRow, ...]
    archive: bool = True  # False: there is no archive (index) yet
    taken_at: float = field(default_factory=time.time, compare=False)
    # storage commitment per destination and state, and the latest failures
    commitments: dict[str, dict[str, int]] = field(default_factory=dict)
    commit_failures: tuple[Failure, ...] = ()
    # each destination as the running agent reports it (up or down, next probe), by name;
    # empty when no agent runs
    destinations: dict[str, Any] = field(default_factory=dict)
    # MPPS messages (forward.mpps_to) per destination and state (MPPS_STATES), and the
    # first quarantined or retrying ones
    mpps: dict[str, dict[str, int]] = field(default_factory=dict)
    mpps_rows: tuple[MppsRow, ...] = ()
    # prefetch jobs per state (and studies, bytes landed), and the first of them
    # (agent.ops.prefetch: plain values, never a patient ID)
    prefetch: dict[str, int] = field(default_factory=dict)
    prefetch_jobs: tuple[dict[str, Any], ...] = ()

    def lines(self) -> list[str]:
        """The listing as text, as the CLI prints it and the console shows it."""
        if not self.archive:
            return [NO_ARCHIVE]
        return (self._job_lines() + self._mpps_lines() + self._commit_lines()
                + prefetch_lines(self.prefetch, self.prefetch_jobs, self.taken_at))

    def to_json(self) -> dict[str, Any]:
        """The listing as ``edge-agent queue --json`` prints it: plain JSON values."""
        data = dataclasses.asdict(self)
        data["jobs"] = data.pop("rows")
        return dict(json.loads(json.dumps(data)))

    def _mpps_lines(self) -> list[str]:
        """MPPS messages per destination, then each one quarantined or retrying."""
        lines = []
        for destination, counts in sorted(self.mpps.items()):
            summary = ", ".join(f"{counts.get(s, 0)} {s}" for s in MPPS_STATES)
            lines.append(f"{destination} MPPS: {summary}")
            lines += [
                self._mpps_row(r) for r in self.mpps_rows if r.destination == destination
            ]
        return lines

    def _mpps_row(self, row: MppsRow) -> str:
        if row.state == mpps.QUARANTINED:
            when = "quarantined"
        elif row.next_attempt <= self.taken_at:
            when = "due now"
        else:
            when = f"next in {row.next_attempt - self.taken_at:.0f} s"
        error = f"  last error: {row.last_error}" if row.last_error else ""
        return f"  #{row.seq:<6} {row.kind:8} {when:16} tries {row.attempts}  {row.step_uid}{error}"

    def _commit_lines(self) -> list[str]:
        """Storage commitment state per commit-enabled destination, failures with reasons."""
        lines = []
        for destination, counts in sorted(self.commitments.items()):
            summary = ", ".join(f"{counts.get(s, 0)} {s}" for s in STATES)
            lines.append(f"{destination} commitment: {summary}")
            lines += [
                f"  not committed (reason 0x{f.reason:04X})  {f.sop_instance_uid}"
                for f in self.commit_failures
                if f.destination == destination
            ]
        return lines

    def _job_lines(self) -> list[str]:
        down = {name for name, d in self.destinations.items() if d.get("state") == "down"}
        closed = {name for name, d in self.destinations.items()
                  if not d.get("window_open", True)}
        waiting = self.depth or any(
            counts.get(s) for counts in self.mpps.values() for s in MPPS_STATES[:3]
        )
        lines = [] if waiting else ["queue empty: everything was delivered"]
        for destination in sorted(set(self.depth) | down):
            counts = self.depth.get(destination, {})
            summary = ", ".join(
                f"{counts.get(s, 0)} {s}"
                for s in (queue.PENDING, queue.RETRYING, queue.QUARANTINED)
            )
            if counts.get(queue.HELD):
                summary += f", {counts[queue.HELD]} held until their study is complete"
            lines.append(f"{destination}: {summary}")
            if destination in self.destinations:
                reported = self.destinations[destination]
                lines.append(f"  state {state_line(reported, self.taken_at)}")
                pace = pace_line(reported)
                if pace:
                    lines.append(f"  pace  {pace}")
            lines += [
                self._row(r, destination in down, destination in closed)
                for r in self.rows
                if r.destination == destination
            ]
        return lines

    def _row(self, row: queue.QueueRow, down: bool = False, closed: bool = False) -> str:
        if row.state == queue.QUARANTINED:
            when = "quarantined"
        elif row.state == queue.HELD:
            when = "study arriving"
        elif down:
            when = "waits (down)"
        elif closed and row.next_attempt <= self.taken_at:
            when = "waits (window)"
        elif row.next_attempt <= self.taken_at:
            when = "due now"
        else:
            when = f"next in {row.next_attempt - self.taken_at:.0f} s"
        error = f"  last error: {row.last_error}" if row.last_error else ""
        return (
            f"  #{row.pk:<6} {row.state:11} {when:16} tries {row.attempts}"
            f"  {row.sop_instance_uid}{error}"
        )


@dataclass(frozen=True)
class QueueChange:
    """How many jobs a retry or a purge changed, and which named jobs it could not."""

    action: str  # "retry" or "purge"
    count: int
    archive: bool = True  # False: there is no archive (index) yet
    unknown: tuple[int, ...] = ()  # job ids the queue does not hold
    idle: tuple[tuple[int, str], ...] = ()  # (id, state) of named jobs not waiting to retry
    mpps: int = 0  # MPPS messages a retry re-armed or a purge dropped
    prefetch: int = 0  # retrying or failed prefetch jobs a retry of all made due now

    @property
    def ok(self) -> bool:
        """Every job named was there to change."""
        return self.archive and not self.unknown

    @property
    def summary(self) -> str:
        """One line: what was done to how many jobs, and the jobs named in vain."""
        if not self.archive:
            return NO_ARCHIVE
        messages = f" and {self.mpps} MPPS messages" if self.mpps else ""
        messages += f" and {self.prefetch} prefetch jobs" if self.prefetch else ""
        if self.action == "purge":
            return f"purged {self.count} quarantined jobs{messages}"
        if self.unknown:
            ids = ", ".join(f"#{job}" for job in self.unknown)
            noun = "no such job" if len(self.unknown) == 1 else "no such jobs"
            done = f"; re-armed {self.count} jobs" if self.count else ""
            return f"{noun}: {ids} (edge-agent queue lists them){done}"
        idle = "".join(f"; #{job} is {state}, nothing to re-arm" for job, state in self.idle)
        return f"re-armed {self.count} jobs{messages}{idle}"

    def lines(self) -> list[str]:
        """The change as the CLI prints it."""
        if not self.archive:
            return [NO_ARCHIVE]
        return [f"{'OK' if self.ok else 'ERR'} {self.summary}"]


def list_queue(layout: Layout, shown: int = SHOWN, live: Snapshot | None = None) -> QueueListing:
    """The queue's depth per destination and its first ``shown`` waiting jobs, with each
    destination's state as the running agent reports it (``live``: its own model)."""
    if not layout.index_path.exists():
        return QueueListing({}, (), archive=False)
    prefetch, prefetching = prefetch_state(layout)
    with Index(layout.index_path) as index:
        outbox, commits = Outbox(index), PacsCommits(index)
        return QueueListing(
            outbox.depth(),
            tuple(outbox.listing(shown)),
            commitments=commits.counts(),
            commit_failures=tuple(commits.failures(shown)),
            destinations=reported_destinations(layout, live),
            mpps=mpps.depth(index, done=True),
            mpps_rows=tuple(MppsRow.of(job) for job in mpps.troubled(index, shown)),
            prefetch=prefetch,
            prefetch_jobs=prefetching,
        )


def retry_jobs(
    layout: Layout, job_ids: Sequence[int] | None, destinations: Sequence[str] | None = None
) -> QueueChange:
    """Make retrying or quarantined jobs due now: these ids, or all when None (then MPPS
    messages too, each step's in the order taken, and with no ``destinations`` the
    retrying and failed prefetch jobs); ``destinations`` narrows "all" to theirs."""
    if not layout.index_path.exists():
        return QueueChange("retry", 0, archive=False)
    now = time.time()
    with Index(layout.index_path) as index:
        outbox = Outbox(index)
        states = outbox.states_of(list(job_ids)) if job_ids is not None else {}
        prefetch = 0
        if job_ids is None:
            count = outbox.rearm(now, None, destinations)
            messages = mpps.rearm(index, now, destinations)
            if not destinations:
                prefetch = PrefetchQueue(index).retry_now(None, now)
        else:
            count, messages = outbox.rearm(now, list(job_ids)), 0
    named = list(dict.fromkeys(job_ids or ()))
    return QueueChange(
        "retry",
        count,
        mpps=messages,
        prefetch=prefetch,
        unknown=tuple(job for job in named if job not in states),
        idle=tuple(
            (job, states[job]) for job in named
            if states.get(job) not in (None, queue.RETRYING, queue.QUARANTINED)
        ),
    )


def split_targets(
    words: Sequence[str], peers: Collection[str]
) -> tuple[list[int] | None, list[str] | None]:
    """``queue retry`` words as job ids, or as destinations (configured peer names), for
    ``retry_jobs``; AgentError for a word that is neither, or for both kinds at once."""
    numbers = [int(word) for word in words if word.isdigit()]
    names = [word for word in words if not word.isdigit()]
    unknown = [name for name in names if name not in peers]
    if unknown:
        raise AgentError(
            f"no such job or destination: {', '.join(unknown)} (job numbers, or peer names)"
        )
    if numbers and names:
        raise AgentError("name job ids or destinations, not both")
    return (numbers, None) if numbers else (None, names)


def quarantined(layout: Layout) -> int | None:
    """How many jobs (and MPPS messages) a purge would drop (None: there is no archive yet)."""
    if not layout.index_path.exists():
        return None
    with Index(layout.index_path) as index:
        depths = [*Outbox(index).depth().values(), *mpps.depth(index).values()]
        return sum(d.get(queue.QUARANTINED, 0) for d in depths)


def purge_jobs(layout: Layout) -> QueueChange:
    """Give up on every quarantined job for good (retention may then remove its file),
    and on every quarantined MPPS message."""
    if not layout.index_path.exists():
        return QueueChange("purge", 0, archive=False)
    with Index(layout.index_path) as index:
        count = Outbox(index).purge_quarantined()
        return QueueChange("purge", count, mpps=mpps.purge_quarantined(index))
