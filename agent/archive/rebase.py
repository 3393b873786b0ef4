"""Re-basing what the index schedules by wall clock when the system clock jumps.

The queues keep their times as epoch seconds (a restart must find them), so a jump of the
system clock moves every deadline relative to "now": a jump forward of a year makes every
retry due at once and every delivered copy a year old; a jump back makes them wait a
year. Moving the stored times by the jump, in one transaction, keeps each one as far
from "now" as it was: a retry due in a minute is still due in a minute, a copy delivered
yesterday is still a day old. The times only things shown depend on (arrivals, when a
study changed, when a report was settled) stay as they were written; arrivals written
while the clock was not trusted are flagged instead (``instances.clock_untrusted``).

A jump the agent does not see (it happened while the agent was stopped) is not re-based:
retention then brings delivery times from the future back to now, so nothing is kept
forever (``Outbox.clamp_future``).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

# (table, columns moved, which rows): every wall-clock time a schedule or an age is read from
_SHIFTS = (
    # the forward queue: when a waiting job is tried next, and since when it waits
    ("forward_jobs", ("next_attempt", "created_at"), "state IN ('pending', 'retrying')"),
    # when a job was delivered: retention's keep_days counts from it
    ("forward_jobs", ("done_at",), "state = 'done' AND done_at IS NOT NULL"),
    # commitment asked of destinations: commit_after_seconds counts from the last delivery,
    # commit_report_timeout from the request
    ("pacs_commits", ("delivered_at",), "state IN ('awaiting', 'requested')"),
    ("pacs_commits", ("requested_at",), "state = 'requested' AND requested_at IS NOT NULL"),
    # commitment modalities asked of us: the next report attempt; give_up_hours counts from
    # the request's arrival
    ("commitments", ("next_attempt", "received_at"), "state = 'pending'"),
    # MPPS messages passed on: the next attempt
    ("mpps_jobs", ("next_attempt",), "state = 'pending'"),
    # prefetch jobs: when a queued or retrying one is tried (next)
    ("prefetch_jobs", ("next_attempt",), "state IN ('queued', 'retrying')"),
)


@dataclass(frozen=True)
class Rebased:
    """How many rows of each kind a jump moved."""

    forward_jobs: int = 0  # waiting forward jobs (retries and their waiting time)
    delivered: int = 0  # delivered forward jobs (their age for retention)
    pacs_commits: int = 0  # commitment rows of destinations not yet settled
    commitments: int = 0  # commitment transactions waiting for their report
    mpps_jobs: int = 0  # MPPS messages waiting to be passed on
    prefetch_jobs: int = 0  # prefetch jobs waiting to be tried


def rebase(conn: sqlite3.Connection, seconds: float) -> Rebased:
    """Add ``seconds`` to every stored time a schedule is read from, in the caller's
    transaction; how many rows moved."""
    moved: list[int] = []
    for table, columns, where in _SHIFTS:
        assignments = ", ".join(f"{column} = {column} + ?" for column in columns)
        cursor = conn.execute(
            f"UPDATE {table} SET {assignments} WHERE {where}", (seconds,) * len(columns)
        )
        moved.append(max(0, cursor.rowcount))
    waiting, delivered, unsettled, _requested, commitments, mpps_jobs, prefetch = moved
    return Rebased(waiting, delivered, unsettled, commitments, mpps_jobs, prefetch)
