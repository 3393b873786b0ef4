"""The durable forward queue: jobs are rows in the index, written in the same transaction
as the instance they belong to, so an acknowledged instance is always queued.

States: ``pending`` (never tried or re-armed), ``retrying`` (failed, waiting for its next
attempt), ``quarantined`` (given up on until an operator re-arms it), ``done``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

PENDING, RETRYING, QUARANTINED, DONE = "pending", "retrying", "quarantined", "done"
WAITING = (PENDING, RETRYING)


@dataclass(frozen=True)
class Job:
    """One instance to deliver to one destination."""

    pk: int
    sop_instance_uid: str
    destination: str
    attempts: int
    path: str
    sop_class_uid: str
    transfer_syntax: str
    study_uid: str


@dataclass(frozen=True)
class QueueRow:
    """A job as `edge-agent queue` lists it."""

    pk: int
    destination: str
    state: str
    attempts: int
    next_attempt: float
    last_error: str | None
    sop_instance_uid: str


def add_jobs(
    conn: sqlite3.Connection, sop_uid: str, destinations: Iterable[str], now: float
) -> None:
    """Queue an instance for each destination (once: re-sends add nothing)."""
    conn.executemany(
        "INSERT OR IGNORE INTO forward_jobs (SOPInstanceUID, destination, state, next_attempt,"
        " created_at) VALUES (?, ?, 'pending', ?, ?)",
        [(sop_uid, name, now, now) for name in destinations],
    )


def send_again(
    conn: sqlite3.Connection, sop_uids: Iterable[str], destination: str, now: float
) -> int:
    """Queue instances for a destination now, even those it already has (an explicit push)."""
    return conn.executemany(
        "INSERT INTO forward_jobs (SOPInstanceUID, destination, state, next_attempt, created_at)"
        " VALUES (?, ?, 'pending', ?, ?) ON CONFLICT (SOPInstanceUID, destination) DO UPDATE"
        " SET state = 'pending', attempts = 0, next_attempt = excluded.next_attempt,"
        " done_at = NULL, last_error = NULL",
        [(uid, destination, now, now) for uid in sop_uids],
    ).rowcount


@dataclass(frozen=True)
class Lane:
    """One of ``of`` associations to a destination; it carries the jobs whose key falls to it."""

    number: int = 0
    of: int = 1


def due(
    conn: sqlite3.Connection, destination: str, now: float, limit: int, lane: Lane = Lane()
) -> list[Job]:
    """Jobs ready to try, grouped by study so one association carries a study."""
    rows = conn.execute(
        "SELECT j.pk, j.SOPInstanceUID, j.destination, j.attempts, i.path, i.SOPClassUID,"
        " i.transfer_syntax, st.StudyInstanceUID FROM forward_jobs j"
        " JOIN instances i ON i.SOPInstanceUID = j.SOPInstanceUID"
        " JOIN series se ON i.series_pk = se.pk JOIN studies st ON se.study_pk = st.pk"
        " WHERE j.destination = ? AND j.state IN ('pending', 'retrying') AND j.next_attempt <= ?"
        " AND j.pk % ? = ? ORDER BY st.pk, i.pk LIMIT ?",
        (destination, now, lane.of, lane.number, limit),
    ).fetchall()
    return [Job(*row) for row in rows]


def next_due(conn: sqlite3.Connection, destination: str, lane: Lane = Lane()) -> float | None:
    """When the next waiting job of a destination is due (None: nothing waits)."""
    row = conn.execute(
        "SELECT min(next_attempt) FROM forward_jobs WHERE destination = ?"
        " AND state IN ('pending', 'retrying') AND pk % ? = ?",
        (destination, lane.of, lane.number),
    ).fetchone()
    return None if row[0] is None else float(row[0])


def mark_done(conn: sqlite3.Connection, job: Job, now: float) -> None:
    """The destination confirmed the instance."""
    conn.execute(
        "UPDATE forward_jobs SET state = 'done', attempts = attempts + 1, done_at = ?,"
        " last_error = NULL WHERE pk = ?",
        (now, job.pk),
    )


def mark_failed(
    conn: sqlite3.Connection, job: Job, error: str, next_attempt: float, quarantine: bool
) -> None:
    """An attempt failed: wait for the next one, or quarantine."""
    conn.execute(
        "UPDATE forward_jobs SET state = ?, attempts = attempts + 1, next_attempt = ?,"
        " last_error = ? WHERE pk = ?",
        (QUARANTINED if quarantine else RETRYING, next_attempt, error[:500], job.pk),
    )


def rearm(conn: sqlite3.Connection, now: float, job_ids: Sequence[int] | None = None) -> int:
    """Make quarantined or retrying jobs due now; all of them when ``job_ids`` is None."""
    sql = (
        "UPDATE forward_jobs SET state = 'pending', attempts = 0, next_attempt = ?"
        " WHERE state IN ('retrying', 'quarantined')"
    )
    if job_ids is None:
        return conn.execute(sql, (now,)).rowcount
    marks = ", ".join("?" for _ in job_ids)
    return conn.execute(f"{sql} AND pk IN ({marks})", (now, *job_ids)).rowcount


def purge_quarantined(conn: sqlite3.Connection) -> int:
    """Give up on every quarantined job (the files become eligible for retention)."""
    return conn.execute("DELETE FROM forward_jobs WHERE state = 'quarantined'").rowcount


def listing(conn: sqlite3.Connection, limit: int = 1000) -> list[QueueRow]:
    """Jobs not yet done, for `edge-agent queue`."""
    rows = conn.execute(
        "SELECT pk, destination, state, attempts, next_attempt, last_error, SOPInstanceUID"
        " FROM forward_jobs WHERE state IN ('pending', 'retrying', 'quarantined')"
        " ORDER BY destination, state, next_attempt"
        " LIMIT ?",
        (limit,),
    ).fetchall()
    return [QueueRow(*row) for row in rows]


def depth(conn: sqlite3.Connection) -> dict[str, dict[str, int]]:
    """Job counts per destination and state (done excluded: read every second, so it
    names the states it wants instead of scanning every delivered job)."""
    counts: dict[str, dict[str, int]] = {}
    for destination, state, count in conn.execute(
        "SELECT destination, state, count(*) FROM forward_jobs WHERE state <> 'done'"
        " GROUP BY destination, state"
    ):
        counts.setdefault(destination, {})[state] = count
    return counts
