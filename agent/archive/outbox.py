"""The durable forward queue: jobs are rows in the index, written in the same transaction
as the instance they belong to, so an acknowledged instance is always queued.

States: ``pending`` (never tried or re-armed), ``retrying`` (failed, waiting for its next
attempt), ``quarantined`` (given up on until an operator re-arms it), ``done``, and
``held``: a job for a destination that acts per study (``forward.when = "complete"``),
queued with its instance and made ``pending`` by ``held.release`` in the transaction that
makes its study complete. Such a job carries its study's key: every job of a study
falls to the same lane of its destination, so one association carries the study, in
series and instance order. What to
retry when, and what retention may remove, is decided in ``agent.forward``; this module
only keeps the rows.

A sender's per-instance marks (done, failed) skip their own sync: they promise nothing to
anyone, a power cut that takes them only makes the instance go again (at least once,
never zero times), and an fsync per forwarded instance would hold the index's write lock
that every ingest waits for. They reach the disk with the next synced commit.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.archive import priority
from agent.archive.held import HELD as HELD  # re-exported: a state of the queue
from agent.archive.index import Index, connect
from agent.archive.pacs_commits import committed_clause

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


@dataclass(frozen=True)
class Lane:
    """One of ``of`` associations to a destination; it carries the jobs whose key falls to it."""

    number: int = 0
    of: int = 1


def waiting(counts: Mapping[str, int]) -> int:
    """How many jobs of one destination's counts (as ``depth`` gives them) wait to be sent."""
    return sum(counts.get(state, 0) for state in WAITING)


class Outbox:
    """The forward queue of one index: what waits, what was delivered, what gave up."""

    def __init__(self, index: Index) -> None:
        self.index = index

    def reader(self) -> OutboxReader:
        """A read-only connection of its own, so a sender polling its queue never waits
        for the writer's lock (close it when done)."""
        return OutboxReader(self.index.path)

    def due(self, destination: str, now: float, limit: int, lane: Lane = Lane()) -> list[Job]:
        """Jobs ready to try, a study's together in series and instance order."""
        with self.index.reading() as conn:
            return _due(conn, destination, now, limit, lane)

    def next_due(self, destination: str, lane: Lane = Lane()) -> float | None:
        """When the next waiting job of a destination is due (None: nothing waits)."""
        with self.index.reading() as conn:
            return _next_due(conn, destination, lane)

    def mark_done(self, job: Job, now: float) -> None:
        """The destination confirmed the instance."""
        with self.index.transaction(synced=False) as conn:
            conn.execute(
                "UPDATE forward_jobs SET state = 'done', attempts = attempts + 1, done_at = ?,"
                " last_error = NULL WHERE pk = ?",
                (now, job.pk),
            )

    def mark_failed(self, job: Job, error: str, next_attempt: float, quarantine: bool) -> None:
        """An attempt failed: wait until ``next_attempt``, or quarantine."""
        with self.index.transaction(synced=False) as conn:
            conn.execute(
                "UPDATE forward_jobs SET state = ?, attempts = attempts + 1, next_attempt = ?,"
                " last_error = ? WHERE pk = ?",
                (QUARANTINED if quarantine else RETRYING, next_attempt, error[:500], job.pk),
            )

    def send_again(self, sop_uids: Iterable[str], destination: str, now: float) -> int:
        """Queue instances for a destination now, even those it already has (an explicit push)."""
        with self.index.transaction() as conn:
            return conn.executemany(
                "INSERT INTO forward_jobs (SOPInstanceUID, destination, state, next_attempt,"
                " created_at) VALUES (?, ?, 'pending', ?, ?)"
                " ON CONFLICT (SOPInstanceUID, destination) DO UPDATE"
                " SET state = 'pending', attempts = 0, next_attempt = excluded.next_attempt,"
                " done_at = NULL, last_error = NULL",
                [(uid, destination, now, now) for uid in sop_uids],
            ).rowcount

    def rearm(
        self,
        now: float,
        job_ids: Sequence[int] | None = None,
        destinations: Sequence[str] | None = None,
    ) -> int:
        """Make quarantined or retrying jobs due now; all of them when ``job_ids`` is None
        (those for ``destinations`` when given)."""
        sql = (
            "UPDATE forward_jobs SET state = 'pending', attempts = 0, next_attempt = ?"
            " WHERE state IN ('retrying', 'quarantined')"
        )
        with self.index.transaction() as conn:
            if job_ids is None and destinations is not None:
                marks = ", ".join("?" for _ in destinations)
                return conn.execute(f"{sql} AND destination IN ({marks})",
                                    (now, *destinations)).rowcount
            if job_ids is None:
                return conn.execute(sql, (now,)).rowcount
            marks = ", ".join("?" for _ in job_ids)
            return conn.execute(f"{sql} AND pk IN ({marks})", (now, *job_ids)).rowcount

    def states_of(self, job_ids: Sequence[int]) -> dict[int, str]:
        """The state of each of these jobs that exists (``queue retry`` names the others)."""
        if not job_ids:
            return {}
        marks = ", ".join("?" for _ in job_ids)
        with self.index.reading() as conn:
            rows = conn.execute(
                f"SELECT pk, state FROM forward_jobs WHERE pk IN ({marks})", tuple(job_ids)
            ).fetchall()
        return {int(pk): str(state) for pk, state in rows}

    def purge_quarantined(self) -> int:
        """Give up on every quarantined job (the files become eligible for retention)."""
        with self.index.transaction() as conn:
            return conn.execute("DELETE FROM forward_jobs WHERE state = 'quarantined'").rowcount

    def listing(self, limit: int = 1000) -> list[QueueRow]:
        """Jobs not yet done, for `edge-agent queue`."""
        with self.index.reading() as conn:
            rows = conn.execute(
                "SELECT pk, destination, state, attempts, next_attempt, last_error,"
                " SOPInstanceUID FROM forward_jobs"
                " WHERE state IN ('pending', 'retrying', 'quarantined', 'held')"
                " ORDER BY destination, state, next_attempt LIMIT ?",
                (limit,),
            ).fetchall()
        return [QueueRow(*row) for row in rows]

    def depth(self) -> dict[str, dict[str, int]]:
        """Job counts per destination and state (done excluded: read every second, so it
        names the states it wants, which the state index finds without visiting every
        delivered job)."""
        counts: dict[str, dict[str, int]] = {}
        with self.index.reading() as conn:
            for destination, state, count in conn.execute(
                "SELECT destination, state, count(*) FROM forward_jobs"
                " WHERE state IN ('pending', 'retrying', 'quarantined', 'held')"
                " GROUP BY destination, state"
            ):
                counts.setdefault(destination, {})[state] = count
        return counts

    def waiting(self) -> dict[str, tuple[int, float]]:
        """Per destination, the bytes of the instances still to be delivered (pending,
        retrying, held: quarantined ones will not be tried) and when the oldest of them
        was queued (epoch seconds). Read every second: it visits only those jobs."""
        with self.index.reading() as conn:
            rows = conn.execute(
                "SELECT j.destination, sum(i.size), min(j.created_at) FROM forward_jobs j"
                " JOIN instances i ON i.SOPInstanceUID = j.SOPInstanceUID"
                " WHERE j.state IN ('pending', 'retrying', 'held') GROUP BY j.destination"
            ).fetchall()
        return {destination: (int(size), float(oldest)) for destination, size, oldest in rows}

    def delivered(
        self, before: float | None, limit: int, committed_by: Sequence[str] = ()
    ) -> list[str]:
        """Paths of instances every one of their destinations confirmed and (if named)
        every ``committed_by`` destination committed. With ``before``: the last delivery
        before then, the longest delivered first (age-based retention). With None: however
        long ago, the earliest arrived first, in the index's own order (its primary key),
        which no jump of the clock can disturb (the free-space floor). An instance with
        any job not done, or that was never routed anywhere, is never among them."""
        committed, parameters = committed_clause(committed_by)
        where = f" WHERE {committed}" if committed else ""
        if before is None:
            having, order, values = "", "i.pk", (*parameters, limit)
        else:
            having, order = " AND max(j.done_at) <= ?", "max(j.done_at)"
            values = (*parameters, before, limit)
        with self.index.reading() as conn:
            rows = conn.execute(
                "SELECT i.path FROM instances i"
                f" JOIN forward_jobs j ON j.SOPInstanceUID = i.SOPInstanceUID{where}"
                f" GROUP BY i.pk HAVING min(j.state = 'done') = 1{having}"
                f" ORDER BY {order} LIMIT ?",
                values,
            ).fetchall()
        return [row[0] for row in rows]

    def clamp_future(self, now: float) -> int:
        """Delivery times later than ``now`` become ``now`` (the clock went back while
        nobody re-based them, say while the agent was stopped): such a copy is then kept
        ``keep_days`` from now, not until the clock catches up. How many moved.

        Looks first, so the write lock every ingest needs is taken only when needed."""
        where = " WHERE state = 'done' AND done_at > ?"
        with self.index.reading() as conn:
            if conn.execute(f"SELECT 1 FROM forward_jobs{where} LIMIT 1",
                            (now,)).fetchone() is None:
                return 0
        with self.index.transaction() as conn:
            return conn.execute(f"UPDATE forward_jobs SET done_at = ?{where}",
                                (now, now)).rowcount


class OutboxReader:
    """The reads a sender polls, over a read-only connection of its own."""

    def __init__(self, path: Path) -> None:
        self._conn = connect(path, readonly=True)

    def due(self, destination: str, now: float, limit: int, lane: Lane = Lane()) -> list[Job]:
        """Jobs ready to try, a study's together in series and instance order."""
        return _due(self._conn, destination, now, limit, lane)

    def next_due(self, destination: str, lane: Lane = Lane()) -> float | None:
        """When the next waiting job of a destination is due (None: nothing waits)."""
        return _next_due(self._conn, destination, lane)

    def due_matching(
        self, destination: str, now: float, limit: int, lane: Lane,
        rule: Sequence[tuple[str, str]],
    ) -> list[Job]:
        """Due jobs whose instances match a priority rule (``agent.archive.priority``)."""
        rows = priority.due_rows(self._conn, destination, now, limit, (lane.number, lane.of),
                                 rule)
        return [Job(*row) for row in rows]

    def due_pairs(self, destination: str, now: float, lane: Lane) -> set[tuple[str, str]]:
        """(SOP class, transfer syntax) of every job of the lane ready to try: the contexts
        an association offers, so a study whose later series are of another class is not
        cut in two."""
        rows = self._conn.execute(
            "SELECT DISTINCT i.SOPClassUID, i.transfer_syntax FROM forward_jobs j"
            " JOIN instances i ON i.SOPInstanceUID = j.SOPInstanceUID"
            " WHERE j.destination = ? AND j.state IN ('pending', 'retrying')"
            " AND j.next_attempt <= ? AND coalesce(j.study_key, j.pk) % ? = ?",
            (destination, now, lane.of, lane.number),
        ).fetchall()
        return {(str(cls), str(syntax)) for cls, syntax in rows}

    def waiting(self, destination: str) -> int:
        """How many jobs of a destination wait to be sent (pending or retrying)."""
        row = self._conn.execute(
            "SELECT count(*) FROM forward_jobs WHERE destination = ?"
            " AND state IN ('pending', 'retrying')",
            (destination,),
        ).fetchone()
        return int(row[0])

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    def __enter__(self) -> OutboxReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def add_jobs(
    conn: sqlite3.Connection,
    sop_uid: str,
    destinations: Iterable[str],
    now: float,
    per_study: Collection[str] = (),
) -> None:
    """Queue an instance for each destination (once: re-sends add nothing), in the
    transaction that indexes it (after the instance's row): acknowledged implies queued.
    The jobs of ``per_study`` destinations are held, with their study's key, until
    ``held.release``."""
    rows = [(sop_uid, name) for name in destinations]
    conn.executemany(
        "INSERT OR IGNORE INTO forward_jobs (SOPInstanceUID, destination, state, next_attempt,"
        " created_at) VALUES (?, ?, 'pending', ?, ?)",
        [(sop, name, now, now) for sop, name in rows if name not in per_study],
    )
    conn.executemany(
        "INSERT OR IGNORE INTO forward_jobs (SOPInstanceUID, destination, state, next_attempt,"
        " created_at, study_key) SELECT ?, ?, ?, ?, ?, se.study_pk FROM instances i"
        " JOIN series se ON i.series_pk = se.pk WHERE i.SOPInstanceUID = ?",
        [(sop, name, HELD, now, now, sop) for sop, name in rows if name in per_study],
    )


def drop_jobs(conn: sqlite3.Connection, paths: Collection[str]) -> None:
    """Forget the jobs of the instances at ``paths`` (they are being removed)."""
    conn.executemany(
        "DELETE FROM forward_jobs WHERE SOPInstanceUID ="
        " (SELECT SOPInstanceUID FROM instances WHERE path = ?)",
        [(p,) for p in paths],
    )


def _due(
    conn: sqlite3.Connection, destination: str, now: float, limit: int, lane: Lane
) -> list[Job]:
    rows = conn.execute(
        "SELECT j.pk, j.SOPInstanceUID, j.destination, j.attempts, i.path, i.SOPClassUID,"
        " i.transfer_syntax, st.StudyInstanceUID FROM forward_jobs j"
        " JOIN instances i ON i.SOPInstanceUID = j.SOPInstanceUID"
        " JOIN series se ON i.series_pk = se.pk JOIN studies st ON se.study_pk = st.pk"
        " WHERE j.destination = ? AND j.state IN ('pending', 'retrying') AND j.next_attempt <= ?"
        " AND coalesce(j.study_key, j.pk) % ? = ? ORDER BY st.pk,"
        " CAST(se.SeriesNumber AS INTEGER), se.pk, CAST(i.InstanceNumber AS INTEGER), i.pk"
        " LIMIT ?",
        (destination, now, lane.of, lane.number, limit),
    ).fetchall()
    return [Job(*row) for row in rows]


def _next_due(conn: sqlite3.Connection, destination: str, lane: Lane) -> float | None:
    row = conn.execute(
        "SELECT min(next_attempt) FROM forward_jobs WHERE destination = ?"
        " AND state IN ('pending', 'retrying') AND coalesce(study_key, pk) % ? = ?",
        (destination, lane.of, lane.number),
    ).fetchone()
    return None if row[0] is None else float(row[0])
