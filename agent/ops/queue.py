"""The forward queue: what waits to be forwarded, and re-arming or purging it.

Changes take effect at the senders' next look (seconds).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.archive import Layout
from agent.archive import outbox as queue
from agent.archive.index import Index
from agent.archive.outbox import Outbox
from agent.archive.pacs_commits import STATES, Failure, PacsCommits
from agent.ops.reachability import reported_destinations, state_line
from agent.status import Snapshot

SHOWN = 50
NO_ARCHIVE = "queue empty (no archive yet)"


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

    def lines(self) -> list[str]:
        """The listing as text, as the CLI prints it and the console shows it."""
        if not self.archive:
            return [NO_ARCHIVE]
        return self._job_lines() + self._commit_lines()

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
        lines = [] if self.depth else ["queue empty: everything was delivered"]
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
            lines += [
                self._row(r, destination in down)
                for r in self.rows
                if r.destination == destination
            ]
        return lines

    def _row(self, row: queue.QueueRow, down: bool = False) -> str:
        if row.state == queue.QUARANTINED:
            when = "quarantined"
        elif row.state == queue.HELD:
            when = "study arriving"
        elif down:
            when = "waits (down)"
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

    @property
    def ok(self) -> bool:
        """Every job named was there to change."""
        return self.archive and not self.unknown

    @property
    def summary(self) -> str:
        """One line: what was done to how many jobs, and the jobs named in vain."""
        if not self.archive:
            return NO_ARCHIVE
        if self.action == "purge":
            return f"purged {self.count} quarantined jobs"
        if self.unknown:
            ids = ", ".join(f"#{job}" for job in self.unknown)
            noun = "no such job" if len(self.unknown) == 1 else "no such jobs"
            done = f"; re-armed {self.count} jobs" if self.count else ""
            return f"{noun}: {ids} (edge-agent queue lists them){done}"
        idle = "".join(f"; #{job} is {state}, nothing to re-arm" for job, state in self.idle)
        return f"re-armed {self.count} jobs{idle}"

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
    with Index(layout.index_path) as index:
        outbox, commits = Outbox(index), PacsCommits(index)
        return QueueListing(
            outbox.depth(),
            tuple(outbox.listing(shown)),
            commitments=commits.counts(),
            commit_failures=tuple(commits.failures(shown)),
            destinations=reported_destinations(layout, live),
        )


def retry_jobs(layout: Layout, job_ids: Sequence[int] | None) -> QueueChange:
    """Make retrying or quarantined jobs due now: these ids, or all when None."""
    if not layout.index_path.exists():
        return QueueChange("retry", 0, archive=False)
    with Index(layout.index_path) as index:
        outbox = Outbox(index)
        states = outbox.states_of(list(job_ids)) if job_ids is not None else {}
        count = outbox.rearm(time.time(), None if job_ids is None else list(job_ids))
    named = list(dict.fromkeys(job_ids or ()))
    return QueueChange(
        "retry",
        count,
        unknown=tuple(job for job in named if job not in states),
        idle=tuple(
            (job, states[job]) for job in named
            if states.get(job) not in (None, queue.RETRYING, queue.QUARANTINED)
        ),
    )


def quarantined(layout: Layout) -> int | None:
    """How many jobs a purge would drop (None: there is no archive yet)."""
    if not layout.index_path.exists():
        return None
    with Index(layout.index_path) as index:
        return sum(d.get(queue.QUARANTINED, 0) for d in Outbox(index).depth().values())


def purge_jobs(layout: Layout) -> QueueChange:
    """Give up on every quarantined job for good (retention may then remove its file)."""
    if not layout.index_path.exists():
        return QueueChange("purge", 0, archive=False)
    with Index(layout.index_path) as index:
        return QueueChange("purge", Outbox(index).purge_quarantined())
