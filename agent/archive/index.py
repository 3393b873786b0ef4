"""The SQLite index: patient -> study -> series -> instance, plus conflicting copies.

One writer connection shared under a lock (writes serialise in SQLite anyway) and WAL
so readers never block the writer. The index holds what no file can restore (the
commitment transactions a modality waits on, what a PACS committed, conflicts, queue
commands), so a commit is synced to disk before ``transaction()`` returns
(``synchronous=FULL``): what the agent acknowledges after it survives a power cut.

Commits whose loss breaks no promise skip their sync (``synced=False``): indexing a newly
received instance, whose file is fsynced (with its directory entry, and its sender's AE
title in its meta) before the row is written, and which start-up recovery indexes and
routes again from that file if the row is lost; and a sender's per-instance marks
(outbox.py). They reach the disk with the next synced commit (one WAL sync covers every
frame before it) or checkpoint, which saves an fsync per instance.

The schema grows by numbered migrations, never by rebuilding; each is synced, and so is
the directory entry of the index and its WAL.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from agent.archive import commitments, durable, mpps, pacs_commits, prefetch_jobs, studies
from agent.archive.keys import KEYS, LEADING_SPACES_PAD, TABLES
from agent.dicom.models import Level
from agent.errors import AgentError, IndexUnavailable

NEWEST_ROWS = 1000  # the rows newest_arrival looks at
_PARENT = {Level.STUDY: "patient_pk", Level.SERIES: "study_pk", Level.IMAGE: "series_pk"}
_UNIQUE_COLUMN = {
    Level.PATIENT: "identity",
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.IMAGE: "SOPInstanceUID",
}
_FILE_COLUMNS = ("path", "size", "transfer_syntax", "calling_ae", "received_at", "charset")


@dataclass(frozen=True)
class InstanceRecord:
    """Everything the index stores about one received instance."""

    levels: Mapping[Level, Mapping[str, str | None]]
    path: str
    size: int
    transfer_syntax: str
    calling_ae: str
    received_at: str
    charset: str

    @property
    def sop_instance_uid(self) -> str:
        """The instance's SOP Instance UID."""
        return str(self.levels[Level.IMAGE]["SOPInstanceUID"])


@dataclass(frozen=True)
class Counts:
    """How much the archive holds."""

    patients: int
    studies: int
    series: int
    instances: int
    bytes: int
    conflicts: int
    clock_untrusted: int = 0  # instances that arrived while the clock was not trusted


def _columns(level: Level) -> list[str]:
    columns: list[str] = []
    for key in KEYS[level]:
        columns.append(key.keyword)
        if key.norm_column:
            columns.append(key.norm_column)
    return columns


def _create_table(level: Level) -> str:
    parent = _PARENT.get(level)
    lines = ["pk INTEGER PRIMARY KEY"]
    if parent:
        lines.append(f"{parent} INTEGER NOT NULL")
    if level is Level.PATIENT:
        lines.append("identity TEXT NOT NULL UNIQUE")
    lines += [f"{column} TEXT" for column in _columns(level)]
    if level is Level.IMAGE:
        lines += [
            "path TEXT NOT NULL UNIQUE",
            "size INTEGER NOT NULL",
            "transfer_syntax TEXT NOT NULL",
            "calling_ae TEXT NOT NULL",
            "received_at TEXT NOT NULL",
            "charset TEXT NOT NULL",
        ]
    if level is not Level.PATIENT:
        lines.append(f"UNIQUE ({_UNIQUE_COLUMN[level]})")
    return f"CREATE TABLE {TABLES[level]} (\n  " + ",\n  ".join(lines) + "\n)"


def _migrate_to_1(conn: sqlite3.Connection) -> None:
    for level in Level:
        conn.execute(_create_table(level))
    _execute_all(
        conn,
        """
        CREATE TABLE conflicts (
          pk INTEGER PRIMARY KEY, SOPInstanceUID TEXT NOT NULL, path TEXT NOT NULL UNIQUE,
          size INTEGER NOT NULL, calling_ae TEXT NOT NULL, received_at TEXT NOT NULL);
        CREATE INDEX patients_name ON patients (PatientName_norm);
        CREATE INDEX patients_id ON patients (PatientID);
        CREATE INDEX studies_patient ON studies (patient_pk);
        CREATE INDEX studies_date ON studies (StudyDate);
        CREATE INDEX studies_accession ON studies (AccessionNumber);
        CREATE INDEX series_study ON series (study_pk);
        CREATE INDEX instances_series ON instances (series_pk);
    """,
    )


def _execute_all(conn: sqlite3.Connection, script: str) -> None:
    """Run ';'-separated statements inside the current transaction (executescript commits)."""
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


def _migrate_to_2(conn: sqlite3.Connection) -> None:
    """The forward queue: one job per (instance, destination), keyed by SOP Instance UID
    so that it survives a rebuild of the hierarchy tables."""
    _execute_all(
        conn,
        """
        CREATE TABLE forward_jobs (
          pk INTEGER PRIMARY KEY, SOPInstanceUID TEXT NOT NULL, destination TEXT NOT NULL,
          state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
          next_attempt REAL NOT NULL, last_error TEXT, created_at REAL NOT NULL,
          done_at REAL, UNIQUE (SOPInstanceUID, destination));
        CREATE INDEX forward_due ON forward_jobs (destination, state, next_attempt);
        CREATE INDEX forward_state ON forward_jobs (state, destination);
    """,
    )


def _migrate_to_3(conn: sqlite3.Connection) -> None:
    """Which syntaxes each SOP class is stored in, read when a C-GET peer negotiates."""
    conn.execute("CREATE INDEX instances_syntax ON instances (SOPClassUID, transfer_syntax)")


def _migrate_to_4(conn: sqlite3.Connection) -> None:
    """Leading spaces of AE, CS, DS, IS, LO and SH values are padding: drop them."""
    for level, keys in KEYS.items():
        for key in keys:
            if key.vr in LEADING_SPACES_PAD:
                column = key.keyword
                conn.execute(
                    f"UPDATE {TABLES[level]} SET {column} = ltrim({column}, ' ')"
                    f" WHERE {column} LIKE ' %'"
                )


def _migrate_to_9(conn: sqlite3.Connection) -> None:
    """Jobs that act per study (``forward.when = "complete"``): the study's key, which
    chooses their lane and finds them when the study is complete; held jobs are found by it."""
    conn.execute("ALTER TABLE forward_jobs ADD COLUMN study_key INTEGER")
    conn.execute(
        "CREATE INDEX forward_study ON forward_jobs (study_key, destination, state)"
        " WHERE study_key IS NOT NULL"
    )


def _migrate_to_10(conn: sqlite3.Connection) -> None:
    """Instances indexed while the system clock was not trusted (``clock_untrusted = 1``):
    their arrival time may be wrong. A partial index keeps counting them cheap."""
    conn.execute("ALTER TABLE instances ADD COLUMN clock_untrusted INTEGER NOT NULL DEFAULT 0")
    conn.execute("CREATE INDEX instances_untrusted ON instances (pk) WHERE clock_untrusted = 1")


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _migrate_to_1,
    _migrate_to_2,
    _migrate_to_3,
    _migrate_to_4,
    pacs_commits.migrate,  # 5: commitment we ask of destinations
    commitments.migrate,  # 6: commitment modalities ask of us
    mpps.migrate,  # 7: performed procedure steps modalities tell us of
    studies.migrate,  # 8: study states and the evidence that completes them
    _migrate_to_9,  # 9: forward jobs held until their study is complete
    _migrate_to_10,  # 10: arrivals flagged while the clock was not trusted
    prefetch_jobs.migrate,  # 11: priors to fetch for a patient ([[prefetch]])
]


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """Open the index with the pragmas every connection needs."""
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    else:
        conn = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


class Index:
    """The archive's index; all writes go through ``transaction()``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._conn = connect(path)
        self._synced = True  # the connection's synchronous setting: FULL
        self._migrate()
        durable.fsync_dir(path.parent)  # the index's and its WAL's entries, made durable

    def close(self) -> None:
        """Close the connection (checkpointing the WAL)."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _migrate(self) -> None:
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise AgentError(
                f"{self.path} was written by a newer edge-agent (schema {version}); upgrade"
            )
        for number, step in enumerate(MIGRATIONS[version:], start=version + 1):
            with self.transaction() as conn:
                step(conn)
                conn.execute(f"PRAGMA user_version={number}")

    @contextmanager
    def transaction(self, *, synced: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed on success, rolled back on any error.

        Committed to disk (fsynced) before this returns, unless ``synced=False``: only
        for rows whose loss in a power cut breaks no promise (the archived files restore
        them at start-up, or losing one only repeats work).
        """
        with self._lock:
            if synced is not self._synced:
                self._conn.execute(f"PRAGMA synchronous={'FULL' if synced else 'NORMAL'}")
                self._synced = synced
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """The writer connection for a quick read, under the lock."""
        with self._lock:
            yield self._conn

    def lookup(self, sop_uid: str) -> tuple[str, int] | None:
        """The stored (path, size) of an instance, if indexed."""
        with self._lock:
            row = self._conn.execute(
                "SELECT path, size FROM instances WHERE SOPInstanceUID = ?", (sop_uid,)
            ).fetchone()
        return None if row is None else (row[0], row[1])

    def paths(self) -> set[str]:
        """Every indexed instance path."""
        with self._lock:
            return {row[0] for row in self._conn.execute("SELECT path FROM instances")}

    def counts(self) -> Counts:
        """How much the archive holds."""
        with self._lock:
            return read_counts(self._conn)

    def newest_arrival(self) -> str | None:
        """The latest arrival stamp (ISO 8601) among the newest rows that a trusted clock
        stamped; the clock must not read earlier (agent.timekeeping). The newest rows by
        primary key, not every row: cheap at any size."""
        with self._lock:
            row = self._conn.execute(
                "SELECT max(received_at) FROM (SELECT received_at, clock_untrusted"
                " FROM instances ORDER BY pk DESC LIMIT ?) WHERE clock_untrusted = 0",
                (NEWEST_ROWS,),
            ).fetchone()
        return None if row is None else row[0]

    def trouble(self) -> str | None:
        """Why the index does not answer a read (None: it does), for the watchdog."""
        try:
            with unavailable_as_error(), self._lock:
                self._conn.execute("SELECT 1 FROM instances LIMIT 1").fetchall()
        except IndexUnavailable as exc:
            return f"the index does not answer: {exc}"
        return None


@contextmanager
def unavailable_as_error() -> Iterator[None]:
    """Raise SQLite's errors as IndexUnavailable, which callers outside the archive catch."""
    try:
        yield
    except sqlite3.Error as exc:
        raise IndexUnavailable(str(exc)) from exc


def counts_at(path: Path) -> Counts:
    """Counts read over a read-only connection of its own (``edge-agent status`` beside
    a running agent, whose writer it never waits for)."""
    conn = connect(path, readonly=True)
    try:
        return read_counts(conn)
    finally:
        conn.close()


def read_counts(conn: sqlite3.Connection) -> Counts:
    """Counts from any connection, read-only ones included."""

    def one(sql: str) -> int:
        return int(conn.execute(sql).fetchone()[0] or 0)

    return Counts(
        patients=one("SELECT count(*) FROM patients"),
        studies=one("SELECT count(*) FROM studies"),
        series=one("SELECT count(*) FROM series"),
        instances=one("SELECT count(*) FROM instances"),
        bytes=one("SELECT sum(size) FROM instances"),
        conflicts=one("SELECT count(*) FROM conflicts"),
        clock_untrusted=_untrusted_or_zero(conn),
    )


def _untrusted_or_zero(conn: sqlite3.Connection) -> int:
    """``count_untrusted``, or 0 from an index an older agent wrote (read-only here: no
    migration adds the column to it)."""
    try:
        return count_untrusted(conn)
    except sqlite3.OperationalError:
        return 0


def add_instance(
    conn: sqlite3.Connection, record: InstanceRecord, *, clock_untrusted: bool = False
) -> int:
    """Insert an instance and any missing parents; return the instance's primary key.
    ``clock_untrusted``: the system clock was not trusted as it arrived (flagged)."""
    patient: dict[str, object] = dict(record.levels[Level.PATIENT])
    patient["identity"] = (
        f"{patient.get('PatientID') or ''}\x00{patient.get('IssuerOfPatientID') or ''}"
    )
    parent = _upsert(conn, Level.PATIENT, patient, None)
    parent = _upsert(conn, Level.STUDY, dict(record.levels[Level.STUDY]), parent)
    parent = _upsert(conn, Level.SERIES, dict(record.levels[Level.SERIES]), parent)
    row: dict[str, object] = dict(record.levels[Level.IMAGE])
    row.update({column: getattr(record, column) for column in _FILE_COLUMNS})
    row[_PARENT[Level.IMAGE]] = parent
    if clock_untrusted:
        row["clock_untrusted"] = 1
    return _insert(conn, TABLES[Level.IMAGE], row)


def count_untrusted(conn: sqlite3.Connection) -> int:
    """How many archived instances arrived while the clock was not trusted."""
    return int(conn.execute(
        "SELECT count(*) FROM instances WHERE clock_untrusted = 1"
    ).fetchone()[0])


def _upsert(
    conn: sqlite3.Connection, level: Level, row: dict[str, object], parent: int | None
) -> int:
    """Return the pk of the row with this level's unique key, inserting it if new.

    The first instance of a study or series decides its attributes; later ones that
    disagree do not rewrite history.
    """
    unique = _UNIQUE_COLUMN[level]
    found = conn.execute(
        f"SELECT pk FROM {TABLES[level]} WHERE {unique} = ?", (row[unique],)
    ).fetchone()
    if found:
        return int(found[0])
    if parent is not None:
        row[_PARENT[level]] = parent
    return _insert(conn, TABLES[level], row)


def _insert(conn: sqlite3.Connection, table: str, row: Mapping[str, object]) -> int:
    columns = ", ".join(row)
    marks = ", ".join("?" for _ in row)
    cursor = conn.execute(f"INSERT INTO {table} ({columns}) VALUES ({marks})", tuple(row.values()))
    return int(cursor.lastrowid or 0)


def add_conflict(
    conn: sqlite3.Connection, sop_uid: str, path: str, size: int, calling_ae: str, received_at: str
) -> None:
    """Record a copy that reused a known SOP Instance UID with different content."""
    conn.execute(
        "INSERT INTO conflicts (SOPInstanceUID, path, size, calling_ae, received_at)"
        " VALUES (?, ?, ?, ?, ?)",
        (sop_uid, path, size, calling_ae, received_at),
    )


def remove_instances(conn: sqlite3.Connection, paths: set[str]) -> None:
    """Drop instances by path, then any series, study or patient left empty."""
    conn.executemany("DELETE FROM instances WHERE path = ?", [(p,) for p in paths])
    _execute_all(
        conn,
        """
        DELETE FROM series WHERE pk NOT IN (SELECT series_pk FROM instances);
        DELETE FROM studies WHERE pk NOT IN (SELECT study_pk FROM series);
        DELETE FROM patients WHERE pk NOT IN (SELECT patient_pk FROM studies);
    """,
    )
    studies.forget_emptied(conn)


def clear(conn: sqlite3.Connection) -> None:
    """Empty the hierarchy, the conflict list and the study states counted from it (for a
    rebuild from the files, which counts every study again as arriving)."""
    for table in ("instances", "series", "studies", "patients", "conflicts", "study_state"):
        conn.execute(f"DELETE FROM {table}")
