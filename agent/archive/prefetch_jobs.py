"""The prefetch queue: one job per (patient, trigger study, PACS), kept in the index so
that a restart finds it, and the reads the prefetch worker decides with.

A job is queued in the transaction that indexes the first instance of a study the
archive did not hold (``Archive.index_new``, when a ``[[prefetch]]`` rule names its
sender), in the transaction that records an MPPS N-CREATE announcing one
(``agent.archive.mpps.create``), or by hand (``edge-agent prefetch``). The same
(patient, trigger study, PACS) is queued once: the MPPS and the images that follow it
make one job. A job by hand has no trigger study and is queued each time it is asked for.

States: ``queued`` (never tried), ``running`` (the worker has it; a job found running at
start-up was cut short and is queued again), ``retrying`` (a transient failure, tried
again at ``next_attempt``), ``done``, ``failed`` (for good, ``last_error`` says why).
``studies`` and ``bytes`` count what landed, over every attempt.

Patient IDs are stored (the worker must ask for them) but never put in a log line here.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Collection, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

QUEUED, RUNNING, RETRYING, DONE, FAILED = "queued", "running", "retrying", "done", "failed"
STATES = (QUEUED, RUNNING, RETRYING, FAILED, DONE)
STUDY, MPPS, HAND = "study", "mpps", "hand"  # what queued a job
UNSAFE_ID = frozenset("*?\\")  # a patient ID with these would match others at the PACS

_COLUMNS = (
    "pk, PatientID, trigger_study, trigger, source, priors_from, modalities, study_date,"
    " state, attempts, next_attempt, last_error, studies, bytes, created_at, started_at,"
    " done_at"
)


class Index(Protocol):
    """What this module needs of agent.archive.index.Index (which imports this module
    for its migration)."""

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]: ...

    def reading(self) -> AbstractContextManager[sqlite3.Connection]: ...


@dataclass(frozen=True)
class Trigger:
    """Why a patient's priors are to be fetched, and from where."""

    patient_id: str
    trigger_study: str | None  # the new study (None: by hand)
    trigger: str  # STUDY, MPPS or HAND
    source: str  # the AE title that sent the study or the MPPS ('' by hand)
    priors_from: str  # the peer (name) the priors come from
    modalities: tuple[str, ...] = ()  # the trigger study's, as far as known
    study_date: str = ""  # the trigger study's date (YYYYMMDD), if known


@dataclass(frozen=True)
class Job:
    """One prefetch job as recorded."""

    pk: int
    patient_id: str
    trigger_study: str | None
    trigger: str
    source: str
    priors_from: str
    modalities: tuple[str, ...]
    study_date: str
    state: str
    attempts: int
    next_attempt: float
    last_error: str | None
    studies: int  # studies landed, over every attempt
    bytes: int  # their bytes
    created_at: float
    started_at: float | None  # when its first query went out, after yielding to forwarding
    done_at: float | None


def migrate(conn: sqlite3.Connection) -> None:
    """The prefetch queue (idempotent)."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS prefetch_jobs (pk INTEGER PRIMARY KEY,"
        " PatientID TEXT NOT NULL, trigger_study TEXT, trigger TEXT NOT NULL,"
        " source TEXT NOT NULL, priors_from TEXT NOT NULL, modalities TEXT NOT NULL,"
        " study_date TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,"
        " next_attempt REAL NOT NULL, last_error TEXT, studies INTEGER NOT NULL DEFAULT 0,"
        " bytes INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL, started_at REAL,"
        " done_at REAL, UNIQUE (PatientID, trigger_study, priors_from))"
    )
    conn.execute(
        "CREATE INDEX IF NOT EXISTS prefetch_due ON prefetch_jobs (state, next_attempt)"
    )


def safe_patient_id(patient_id: str | None) -> bool:
    """A patient ID a query can name alone: not empty (that matches every patient) and
    without wildcard or list characters (which match others)."""
    return bool(patient_id and patient_id.strip()) and not UNSAFE_ID & set(patient_id or "")


def add(conn: sqlite3.Connection, trigger: Trigger, now: float) -> bool:
    """Queue a job in the caller's transaction; False if this (patient, trigger study,
    PACS) is queued already or the patient ID cannot be asked for alone."""
    if not safe_patient_id(trigger.patient_id):
        return False
    cursor = conn.execute(
        "INSERT OR IGNORE INTO prefetch_jobs (PatientID, trigger_study, trigger, source,"
        " priors_from, modalities, study_date, state, next_attempt, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (trigger.patient_id.strip(), trigger.trigger_study, trigger.trigger, trigger.source,
         trigger.priors_from, "\\".join(trigger.modalities), trigger.study_date, QUEUED,
         now, now),
    )
    return cursor.rowcount > 0


def study_held(conn: sqlite3.Connection, study_uid: str) -> bool:
    """Whether the archive indexes any instance of this study."""
    return conn.execute(
        "SELECT 1 FROM studies WHERE StudyInstanceUID = ?", (study_uid,)
    ).fetchone() is not None


def forward_due(conn: sqlite3.Connection, now: float) -> dict[str, int]:
    """Forward jobs due now (pending or retrying, ``next_attempt`` not after ``now``),
    per destination: what a prefetch yields to. The state index finds them."""
    return {
        str(destination): int(count) for destination, count in conn.execute(
            "SELECT destination, count(*) FROM forward_jobs"
            " WHERE state IN ('pending', 'retrying') AND next_attempt <= ? GROUP BY destination",
            (now,),
        )
    }


class PrefetchQueue:
    """The prefetch jobs: queued, claimed one at a time by the worker, and shown."""

    def __init__(self, index: Index) -> None:
        self.index = index

    def add(self, trigger: Trigger, now: float | None = None) -> int | None:
        """Queue a job in a synced transaction of its own; its number, or None if it
        was queued already (or the patient ID cannot be asked for alone)."""
        with self.index.transaction() as conn:
            if not add(conn, trigger, time.time() if now is None else now):
                return None
            return int(conn.execute("SELECT last_insert_rowid()").fetchone()[0])

    def requeue_running(self) -> int:
        """Jobs left running by a stop or a crash are queued again (what landed stays
        landed; the worker skips the studies the archive holds); how many."""
        with self.index.transaction() as conn:
            return conn.execute(
                "UPDATE prefetch_jobs SET state = ? WHERE state = ?", (QUEUED, RUNNING)
            ).rowcount

    def claim(self, now: float) -> Job | None:
        """The job due first, now running with one more attempt; None if none is due.
        Looks first: the idle worker's poll never takes the write lock ingest needs."""
        select = (f"SELECT {_COLUMNS} FROM prefetch_jobs WHERE state IN (?, ?)"
                  " AND next_attempt <= ? ORDER BY next_attempt, pk LIMIT 1")
        with self.index.reading() as conn:
            if conn.execute(select, (QUEUED, RETRYING, now)).fetchone() is None:
                return None
        with self.index.transaction() as conn:
            row = conn.execute(select, (QUEUED, RETRYING, now)).fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE prefetch_jobs SET state = ?, attempts = attempts + 1 WHERE pk = ?",
                (RUNNING, row[0]),
            )
        job = _job(row)
        return replace(job, state=RUNNING, attempts=job.attempts + 1)

    def next_due(self) -> float | None:
        """When the next queued or retrying job is due (epoch seconds), if any."""
        with self.index.reading() as conn:
            row = conn.execute(
                "SELECT min(next_attempt) FROM prefetch_jobs WHERE state IN (?, ?)",
                (QUEUED, RETRYING),
            ).fetchone()
        return None if row[0] is None else float(row[0])

    def started(self, pk: int, now: float) -> None:
        """The job's first query goes out now (kept from its first attempt)."""
        with self.index.transaction() as conn:
            conn.execute(
                "UPDATE prefetch_jobs SET started_at = coalesce(started_at, ?) WHERE pk = ?",
                (now, pk),
            )

    def landed(self, pk: int, studies: int, size: int) -> None:
        """Count a study that landed (``size`` bytes) in the job."""
        with self.index.transaction() as conn:
            conn.execute(
                "UPDATE prefetch_jobs SET studies = studies + ?, bytes = bytes + ? WHERE pk = ?",
                (studies, size, pk),
            )

    def finish(self, pk: int, now: float, note: str | None = None) -> None:
        """The job is done (``note``: what it could not fetch, if anything)."""
        self._end(pk, DONE, note, now, now)

    def retry(self, pk: int, error: str, at: float) -> None:
        """A transient failure: try the job again at ``at``."""
        self._end(pk, RETRYING, error, at, None)

    def fail(self, pk: int, error: str, now: float) -> None:
        """The job failed for good, for this reason."""
        self._end(pk, FAILED, error, now, now)

    def _end(
        self, pk: int, state: str, error: str | None, at: float, done_at: float | None
    ) -> None:
        with self.index.transaction() as conn:
            conn.execute(
                "UPDATE prefetch_jobs SET state = ?, last_error = ?, next_attempt = ?,"
                " done_at = ? WHERE pk = ?",
                (state, error, at, done_at, pk),
            )

    def forget_done(self, before: float) -> int:
        """Delete the jobs that finished well (``done``) before ``before``; how many.
        Failed ones stay until retried: someone should see them."""
        with self.index.transaction() as conn:
            return conn.execute(
                "DELETE FROM prefetch_jobs WHERE state = ? AND done_at < ?", (DONE, before)
            ).rowcount

    def retry_now(self, pks: Iterable[int] | None, now: float) -> int:
        """Make retrying or failed jobs (these, or all) due now; how many."""
        where = "state IN (?, ?)"
        values: list[object] = [QUEUED, now, RETRYING, FAILED]
        if pks is not None:
            chosen = list(pks)
            where += f" AND pk IN ({', '.join('?' for _ in chosen)})"
            values += chosen
        with self.index.transaction() as conn:
            return conn.execute(
                f"UPDATE prefetch_jobs SET state = ?, next_attempt = ? WHERE {where}", values
            ).rowcount

    def get(self, pk: int) -> Job | None:
        """One job by its number."""
        with self.index.reading() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM prefetch_jobs WHERE pk = ?", (pk,)
            ).fetchone()
        return None if row is None else _job(row)

    def listing(self, limit: int = 50) -> list[Job]:
        """The jobs not done, then the latest done, for ``edge-agent queue``."""
        with self.index.reading() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM prefetch_jobs"
                " ORDER BY state = 'done', coalesce(done_at, next_attempt) DESC, pk DESC"
                " LIMIT ?",
                (limit,),
            ).fetchall()
        return [_job(row) for row in rows]

    def counts(self) -> dict[str, int]:
        """Jobs per state, and the studies and bytes fetched over all of them."""
        with self.index.reading() as conn:
            return read_counts(conn)

    def forward_due(self, now: float) -> dict[str, int]:
        """Forward jobs due now per destination (``forward_due``)."""
        with self.index.reading() as conn:
            return forward_due(conn, now)

    def held_studies(self, study_uids: Collection[str]) -> set[str]:
        """Those of these studies the archive holds."""
        with self.index.reading() as conn:
            return held_studies(conn, study_uids)

    def study_bytes(self, study_uid: str) -> int:
        """The bytes the archive holds of one study."""
        with self.index.reading() as conn:
            return study_bytes(conn, study_uid)

    def study_modalities(self, study_uid: str) -> set[str]:
        """The modalities of the archive's series of one study."""
        with self.index.reading() as conn:
            return study_modalities(conn, study_uid)


def no_counts() -> dict[str, int]:
    """The counts of an empty queue (no index yet)."""
    return dict.fromkeys((*STATES, "studies", "bytes"), 0)


def read_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Jobs per state (every state named), plus ``studies`` and ``bytes`` fetched; from
    any connection, read-only ones included (an index without the table: all zero)."""
    counts = no_counts()
    try:
        rows = conn.execute(
            "SELECT state, count(*), sum(studies), sum(bytes) FROM prefetch_jobs GROUP BY state"
        ).fetchall()
    except sqlite3.OperationalError:  # written by an agent before prefetch
        return counts
    for state, count, studies, size in rows:
        counts[state] = int(count)
        counts["studies"] += int(studies or 0)
        counts["bytes"] += int(size or 0)
    return counts


def held_studies(conn: sqlite3.Connection, study_uids: Collection[str]) -> set[str]:
    """Those of these studies the archive holds (any instance of them)."""
    held: set[str] = set()
    uids = list(study_uids)
    for start in range(0, len(uids), 500):
        chunk = uids[start:start + 500]
        held.update(row[0] for row in conn.execute(
            "SELECT StudyInstanceUID FROM studies WHERE StudyInstanceUID IN"
            f" ({', '.join('?' for _ in chunk)})", chunk,
        ))
    return held


def study_bytes(conn: sqlite3.Connection, study_uid: str) -> int:
    """The bytes of the archived instances of one study."""
    row = conn.execute(
        "SELECT sum(i.size) FROM instances i JOIN series se ON i.series_pk = se.pk"
        " JOIN studies st ON se.study_pk = st.pk WHERE st.StudyInstanceUID = ?",
        (study_uid,),
    ).fetchone()
    return int(row[0] or 0)


def study_modalities(conn: sqlite3.Connection, study_uid: str) -> set[str]:
    """The modalities of the archived series of one study."""
    return {
        str(row[0]).strip().upper() for row in conn.execute(
            "SELECT DISTINCT se.Modality FROM series se JOIN studies st ON se.study_pk = st.pk"
            " WHERE st.StudyInstanceUID = ? AND se.Modality IS NOT NULL", (study_uid,),
        ) if str(row[0]).strip()
    }


def counts_at(path: Path) -> dict[str, int]:
    """``read_counts`` over a read-only connection of its own (``edge-agent status``)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return read_counts(conn)
    finally:
        conn.close()


def _job(row: tuple[object, ...]) -> Job:
    values = list(row)
    values[6] = tuple(m for m in str(values[6] or "").split("\\") if m)
    return Job(*values)  # type: ignore[arg-type]


def as_mapping(job: Job) -> Mapping[str, object]:
    """A job as plain values, without its patient ID (for ``queue --json`` and logs)."""
    return {
        "id": job.pk, "trigger": job.trigger, "trigger_study": job.trigger_study,
        "source": job.source, "priors_from": job.priors_from, "state": job.state,
        "attempts": job.attempts, "next_attempt": job.next_attempt,
        "last_error": job.last_error, "studies": job.studies, "bytes": job.bytes,
        "created_at": job.created_at, "started_at": job.started_at, "done_at": job.done_at,
    }
