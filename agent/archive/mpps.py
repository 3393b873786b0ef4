"""Modality Performed Procedure Steps the modalities told us of (PS3.4 Annex F): each step
as received and merged by every N-SET, with its status, caller and times.

A step is written, synced to disk, before its N-CREATE or N-SET is answered, so what a
modality was told is recorded survives a power cut; a refused request writes nothing.
Its attributes are kept as DICOM JSON (PS3.18 F), the study and instance UIDs it names
beside them for those who read steps without DICOM (``studies``, completeness).

Each request taken is also queued, in the same transaction, for every ``forward.mpps_to``
peer (``mpps_jobs``): passed on in the order received, an N-SET never before its step's
N-CREATE, retried and quarantined by agent/forward/mpps.py.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from agent.archive import prefetch_jobs
from agent.archive.commitments import Index

T = TypeVar("T")


@dataclass(frozen=True)
class Step:
    """One performed procedure step as recorded."""

    uid: str  # its SOP Instance UID
    status: str  # IN PROGRESS, COMPLETED or DISCONTINUED
    calling_ae: str  # of the N-CREATE
    study_uids: tuple[str, ...]  # Scheduled Step Attribute Sequence > Study Instance UID
    instance_uids: frozenset[str]  # referenced by its Performed Series Sequence
    created_at: float  # time.time() of the N-CREATE
    updated_at: float  # of the last N-SET (the N-CREATE's until one comes)
    final_at: float | None  # when it became COMPLETED or DISCONTINUED
    attributes: str  # the step as DICOM JSON, merged by every N-SET


_COLUMNS = (
    "sop_instance_uid, status, calling_ae, study_uids, instance_uids, created_at,"
    " updated_at, final_at, attributes"
)


N_CREATE, N_SET = "N-CREATE", "N-SET"
PENDING, DONE, QUARANTINED = "pending", "done", "quarantined"


@dataclass(frozen=True)
class Job:
    """One N-CREATE or N-SET to pass on to one destination, as the modality sent it."""

    seq: int  # the order requests were taken in
    step_uid: str
    destination: str
    kind: str  # N_CREATE or N_SET
    message: str  # its Attribute / Modification List as DICOM JSON
    state: str
    attempts: int
    next_attempt: float
    last_error: str | None


@dataclass(frozen=True)
class Forward:
    """What to queue with a request taken: its message, for these destinations."""

    destinations: Sequence[str] = ()
    message: str = ""


def migrate(conn: sqlite3.Connection) -> None:
    """The MPPS steps table and the queue that passes them on (idempotent)."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS mpps_steps (sop_instance_uid TEXT PRIMARY KEY,"
        " status TEXT NOT NULL, calling_ae TEXT NOT NULL, study_uids TEXT NOT NULL,"
        " instance_uids TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL,"
        " final_at REAL, attributes TEXT NOT NULL)"
    )
    conn.execute(
        "CREATE TABLE IF NOT EXISTS mpps_jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
        " step_uid TEXT NOT NULL, destination TEXT NOT NULL, kind TEXT NOT NULL,"
        " message TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,"
        " next_attempt REAL NOT NULL, last_error TEXT, created_at REAL NOT NULL, done_at REAL)"
    )
    conn.execute(
        "CREATE INDEX IF NOT EXISTS mpps_jobs_due ON mpps_jobs (destination, state, step_uid)"
    )


def create(
    index: Index,
    step: Step,
    forward: Forward = Forward(),
    prefetch: Sequence[prefetch_jobs.Trigger] = (),
) -> bool:
    """Record a new step (and queue its N-CREATE to ``forward``, and the ``prefetch``
    jobs it announces), synced before this returns; False (writing nothing) if a step
    with its UID exists already."""
    with index.transaction() as conn:
        known = conn.execute(
            "SELECT 1 FROM mpps_steps WHERE sop_instance_uid = ?", (step.uid,)
        ).fetchone()
        if known is not None:
            return False
        conn.execute(
            f"INSERT INTO mpps_steps ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            _row(step),
        )
        _enqueue(conn, step.uid, N_CREATE, forward, step.created_at)
        for trigger in prefetch:
            prefetch_jobs.add(conn, trigger, step.created_at)
    return True


def update(
    index: Index, uid: str, change: Callable[[Step], Step | T], forward: Forward = Forward()
) -> Step | T | None:
    """Apply ``change`` to the recorded step ``uid`` in one transaction: a Step it returns
    replaces the record and its N-SET is queued to ``forward`` (synced before this
    returns); anything else (a refusal) writes nothing and is returned. None if no such
    step is recorded."""
    with index.transaction() as conn:
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM mpps_steps WHERE sop_instance_uid = ?", (uid,)
        ).fetchone()
        if row is None:
            return None
        outcome = change(_step(row))
        if isinstance(outcome, Step):
            conn.execute(
                "UPDATE mpps_steps SET status = ?, calling_ae = ?, study_uids = ?,"
                " instance_uids = ?, created_at = ?, updated_at = ?, final_at = ?,"
                " attributes = ? WHERE sop_instance_uid = ?",
                (*_row(outcome)[1:], uid),
            )
            _enqueue(conn, uid, N_SET, forward, outcome.updated_at)
        return outcome


def steps(index: Index) -> list[Step]:
    """Every recorded step, oldest first."""
    with index.reading() as conn:
        return read_steps(conn)


def read_steps(conn: sqlite3.Connection) -> list[Step]:
    """Every recorded step, oldest first, from any connection (a read-only one beside a
    running agent included)."""
    rows = conn.execute(f"SELECT {_COLUMNS} FROM mpps_steps ORDER BY created_at, sop_instance_uid")
    return [_step(row) for row in rows]


def _enqueue(conn: sqlite3.Connection, uid: str, kind: str, forward: Forward, now: float) -> None:
    """Queue the message for each destination; behind a quarantined message of its step it
    is quarantined at once (sent alone it would overtake that one), and re-armed with it."""
    for name in forward.destinations:
        (held,) = conn.execute(
            "SELECT min(seq) FROM mpps_jobs WHERE destination = ? AND state = ?"
            " AND step_uid = ?",
            (name, QUARANTINED, uid),
        ).fetchone()
        state, error = (PENDING, None) if held is None else (
            QUARANTINED, f"after #{held} was quarantined"
        )
        conn.execute(
            "INSERT INTO mpps_jobs (step_uid, destination, kind, message, state, next_attempt,"
            " last_error, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (uid, name, kind, forward.message, state, now, error, now),
        )


def waiting_destinations(index: Index) -> list[str]:
    """The destinations with jobs still to pass on."""
    with index.reading() as conn:
        rows = conn.execute(
            "SELECT DISTINCT destination FROM mpps_jobs WHERE state = ?", (PENDING,)
        )
        return sorted(str(row[0]) for row in rows)


def due(index: Index, destination: str, now: float, limit: int = 50) -> list[Job]:
    """Jobs for ``destination`` due now, in the order taken, each only once every earlier
    job of its step for that destination is passed on (or quarantined)."""
    with index.reading() as conn:
        rows = conn.execute(
            f"SELECT {_JOB_COLUMNS} FROM mpps_jobs j WHERE destination = ? AND state = ?"
            " AND next_attempt <= ? AND NOT EXISTS (SELECT 1 FROM mpps_jobs e"
            "  WHERE e.destination = j.destination AND e.step_uid = j.step_uid"
            "  AND e.state = j.state AND e.seq < j.seq)"
            " ORDER BY seq LIMIT ?",
            (destination, PENDING, now, limit),
        ).fetchall()
    return [Job(*row) for row in rows]


def next_due(index: Index, destination: str) -> float | None:
    """When the earliest pending job for ``destination`` is due, if any is pending."""
    with index.reading() as conn:
        row = conn.execute(
            "SELECT min(next_attempt) FROM mpps_jobs WHERE destination = ? AND state = ?",
            (destination, PENDING),
        ).fetchone()
    return None if row is None or row[0] is None else float(row[0])


def mark_done(index: Index, job: Job, now: float) -> None:
    """The destination took ``job``."""
    with index.transaction() as conn:
        conn.execute(
            "UPDATE mpps_jobs SET state = ?, attempts = attempts + 1, done_at = ?,"
            " last_error = NULL WHERE seq = ?",
            (DONE, now, job.seq),
        )


def mark_failed(index: Index, job: Job, error: str, retry_at: float, quarantine: bool) -> int:
    """An attempt failed: try again at ``retry_at``, or quarantine the job and every later
    pending job of its step for that destination (they cannot be taken without it).
    Returns how many jobs were quarantined."""
    with index.transaction() as conn:
        if not quarantine:
            conn.execute(
                "UPDATE mpps_jobs SET attempts = attempts + 1, next_attempt = ?,"
                " last_error = ? WHERE seq = ?",
                (retry_at, error, job.seq),
            )
            return 0
        conn.execute(
            "UPDATE mpps_jobs SET attempts = attempts + 1, last_error = ? WHERE seq = ?",
            (error, job.seq),
        )
        cursor = conn.execute(
            "UPDATE mpps_jobs SET state = ?, last_error = coalesce(last_error, ?)"
            " WHERE destination = ? AND step_uid = ? AND state = ? AND seq >= ?",
            (
                QUARANTINED,
                f"after #{job.seq} was quarantined",
                job.destination,
                job.step_uid,
                PENDING,
                job.seq,
            ),
        )
        return int(cursor.rowcount)


def jobs(index: Index) -> list[Job]:
    """Every job not yet passed on (pending or quarantined), in the order taken."""
    with index.reading() as conn:
        rows = conn.execute(
            f"SELECT {_JOB_COLUMNS} FROM mpps_jobs WHERE state != ? ORDER BY seq", (DONE,)
        ).fetchall()
    return [Job(*row) for row in rows]


WAITING, RETRYING = "waiting", "retrying"  # pending, never tried / tried and failed


def depth(index: Index, done: bool = False) -> dict[str, dict[str, int]]:
    """Messages per destination: waiting (never tried), retrying, quarantined, and with
    ``done`` those passed on (left out by default: read every second, and ever growing)."""
    where = "" if done else f" WHERE state IN ('{PENDING}', '{QUARANTINED}')"
    counts: dict[str, dict[str, int]] = {}
    with index.reading() as conn:
        for destination, shown, count in conn.execute(
            f"SELECT destination, CASE WHEN state <> '{PENDING}' THEN state"
            f" WHEN attempts > 0 THEN '{RETRYING}' ELSE '{WAITING}' END AS shown, count(*)"
            f" FROM mpps_jobs{where} GROUP BY destination, shown"
        ):
            counts.setdefault(str(destination), {})[str(shown)] = int(count)
    return counts


def troubled(index: Index, limit: int) -> list[Job]:
    """The first ``limit`` messages quarantined or failed at least once, in the order taken."""
    with index.reading() as conn:
        rows = conn.execute(
            f"SELECT {_JOB_COLUMNS} FROM mpps_jobs WHERE state = ? OR (state = ? AND"
            " attempts > 0) ORDER BY seq LIMIT ?",
            (QUARANTINED, PENDING, limit),
        ).fetchall()
    return [Job(*row) for row in rows]


def rearm(index: Index, now: float, destinations: Sequence[str] | None = None) -> int:
    """Make quarantined and retrying messages due now (for these destinations, or all);
    a step's messages keep their order, so its N-CREATE goes before its N-SET (``due``)."""
    sql = (
        "UPDATE mpps_jobs SET state = ?, attempts = 0, next_attempt = ?"
        " WHERE (state = ? OR (state = ? AND attempts > 0))"
    )
    values: tuple[object, ...] = (PENDING, now, QUARANTINED, PENDING)
    if destinations is not None:
        sql += f" AND destination IN ({', '.join('?' for _ in destinations)})"
        values += tuple(destinations)
    with index.transaction() as conn:
        return int(conn.execute(sql, values).rowcount)


def purge_quarantined(index: Index) -> int:
    """Give up on every quarantined message for good (the steps stay recorded); how many."""
    with index.transaction() as conn:
        return int(conn.execute("DELETE FROM mpps_jobs WHERE state = ?", (QUARANTINED,)).rowcount)


_JOB_COLUMNS = (
    "seq, step_uid, destination, kind, message, state, attempts, next_attempt, last_error"
)


def _row(step: Step) -> tuple[object, ...]:
    return (
        step.uid,
        step.status,
        step.calling_ae,
        json.dumps(list(step.study_uids)),
        json.dumps(sorted(step.instance_uids)),
        step.created_at,
        step.updated_at,
        step.final_at,
        step.attributes,
    )


def _step(row: tuple[object, ...]) -> Step:
    uid, status, calling_ae, studies, instances, created, updated, final, attributes = row
    return Step(
        uid=str(uid),
        status=str(status),
        calling_ae=str(calling_ae),
        study_uids=tuple(json.loads(str(studies))),
        instance_uids=frozenset(json.loads(str(instances))),
        created_at=float(str(created)),
        updated_at=float(str(updated)),
        final_at=None if final is None else float(str(final)),
        attributes=str(attributes),
    )
