"""Study completeness, by evidence: every statement about a study's state.

DICOM has no "end of study" in C-STORE. Per study the index keeps its state
(``arriving``, ``complete``, ``reopened``), why it became complete and its counts, and
the evidence that says what it should hold:

- an MPPS step that ended (COMPLETED or DISCONTINUED) names its studies and instances:
  they are complete (``mpps``) in the transaction that indexes the last one of them;
- the modality's storage commitment request: when every instance it lists is held, their
  studies are complete (``commitment``) in the transaction that records the request;
- a quiet period and the MPPS give-up time are judged by ``agent.studies.judge`` (timers,
  monotonic, in memory): ``complete_quietly`` and ``give_up`` carry its verdicts out here,
  each only if nothing changed since it looked.

A study's row is written in the transaction that indexes its instance
(``Archive.index_new``): the row and the instance are lost or kept together in a power
cut, and start-up recovery indexes a lost instance again through the same path.

Whatever makes a study complete also releases its forward jobs held for it
(``agent.archive.held``, ``forward.when = "complete"``) in the same transaction; the
destinations that got jobs are returned, or told to ``StudyBook``'s ``on_release``
after the commit (the forwarding process's wake-up).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from agent.archive.held import release

ARRIVING, COMPLETE, REOPENED = "arriving", "complete", "reopened"
OPEN = (ARRIVING, REOPENED)
MPPS, COMMITMENT, QUIET, GAVE_UP = "mpps", "commitment", "quiet", "gave-up"
WAITING, SETTLED = "waiting", "settled"  # an MPPS step's evidence (or GAVE_UP)


class Index(Protocol):
    """What this module needs of agent.archive.index.Index (which imports this module
    for its migration)."""

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]: ...

    def reading(self) -> AbstractContextManager[sqlite3.Connection]: ...


def migrate(conn: sqlite3.Connection) -> None:
    """The study states and the MPPS evidence behind them (idempotent)."""
    for statement in (
        "CREATE TABLE IF NOT EXISTS study_state (StudyInstanceUID TEXT PRIMARY KEY,"
        " state TEXT NOT NULL, reason TEXT, received INTEGER NOT NULL DEFAULT 0,"
        " expected INTEGER, calling_ae TEXT NOT NULL DEFAULT '', last_arrival TEXT,"
        " changed_at REAL NOT NULL)",
        "CREATE INDEX IF NOT EXISTS study_state_open ON study_state (state, changed_at)",
        "CREATE TABLE IF NOT EXISTS study_evidence (step_uid TEXT PRIMARY KEY,"
        " state TEXT NOT NULL, discontinued INTEGER NOT NULL, recorded_at REAL NOT NULL)",
        "CREATE INDEX IF NOT EXISTS study_evidence_state ON study_evidence (state)",
        "CREATE TABLE IF NOT EXISTS study_evidence_studies (step_uid TEXT NOT NULL,"
        " StudyInstanceUID TEXT NOT NULL, PRIMARY KEY (step_uid, StudyInstanceUID))",
        "CREATE INDEX IF NOT EXISTS study_evidence_by_study"
        " ON study_evidence_studies (StudyInstanceUID)",
        # held: the instance was received (set as it is indexed): a step's missing ones
        # are found without looking each one up in the instances
        "CREATE TABLE IF NOT EXISTS study_expected (step_uid TEXT NOT NULL,"
        " SOPInstanceUID TEXT NOT NULL, held INTEGER NOT NULL DEFAULT 0,"
        " PRIMARY KEY (step_uid, SOPInstanceUID))",
        "CREATE INDEX IF NOT EXISTS study_expected_held ON study_expected (step_uid, held)",
        "CREATE INDEX IF NOT EXISTS study_expected_sop ON study_expected (SOPInstanceUID)",
    ):
        conn.execute(statement)


@dataclass(frozen=True)
class OpenStudy:
    """A study not yet complete, as the judge sees it."""

    study_uid: str
    calling_ae: str
    received: int
    last_arrival: str | None
    covered: bool  # an MPPS step names it and still waits for instances: no quiet rule


# -- written with a new instance, in its transaction ------------------------------------


def note_instance(
    conn: sqlite3.Connection, study_uid: str, sop_uid: str, calling_ae: str, received_at: str
) -> set[str]:
    """Count a newly indexed instance in its study (re-opening a complete one) and complete
    what MPPS evidence now has in full. Runs inside the indexing transaction, after the
    instance's forward jobs were queued; returns the destinations whose held jobs a
    completion released."""
    now = time.time()
    row = conn.execute(
        "SELECT state FROM study_state WHERE StudyInstanceUID = ?", (study_uid,)
    ).fetchone()
    if row is None:
        conn.execute(
            "INSERT INTO study_state (StudyInstanceUID, state, received, calling_ae,"
            " last_arrival, changed_at) VALUES (?, ?, 1, ?, ?, ?)",
            (study_uid, ARRIVING, calling_ae, received_at, now),
        )
    elif row[0] == COMPLETE:
        conn.execute(
            "UPDATE study_state SET state = ?, reason = NULL, expected = NULL,"
            " received = received + 1, calling_ae = ?, last_arrival = ?, changed_at = ?"
            " WHERE StudyInstanceUID = ?",
            (REOPENED, calling_ae, received_at, now, study_uid),
        )
    else:
        conn.execute(
            "UPDATE study_state SET received = received + 1, calling_ae = ?,"
            " last_arrival = ? WHERE StudyInstanceUID = ?",
            (calling_ae, received_at, study_uid),
        )
    if not conn.execute(
        "UPDATE study_expected SET held = 1 WHERE SOPInstanceUID = ?", (sop_uid,)
    ).rowcount:
        return set()  # no MPPS step names it (the usual case: one indexed look-up)
    released: set[str] = set()
    for (step,) in conn.execute(
        "SELECT e.step_uid FROM study_expected x JOIN study_evidence e USING (step_uid)"
        " WHERE x.SOPInstanceUID = ? AND e.state = ?",
        (sop_uid, WAITING),
    ).fetchall():
        released |= _judge_step(conn, step, now, refresh=False)
    return released


def _judge_step(
    conn: sqlite3.Connection, step: str, now: float, *, refresh: bool
) -> set[str]:
    """Complete a waiting step's studies (``mpps``) once every instance it names is held;
    else bring their expected counts up to date: with ``refresh``, or when it names
    several studies (an instance that came shows which of them it is in). Returns the
    destinations whose held jobs were released."""
    studies = _step_studies(conn, step)
    released: set[str] = set()
    if not _missing(conn, step):
        conn.execute("UPDATE study_evidence SET state = ? WHERE step_uid = ?", (SETTLED, step))
        for study in studies:
            _set_expected(conn, study, step)
            released.update(_complete(conn, study, MPPS, now, also_complete=True) or ())
        return released
    if refresh or len(studies) > 1:
        for study in studies:
            _set_expected(conn, study, step)
    return released


# -- evidence ---------------------------------------------------------------------------


class StudyBook:
    """The evidence API other parts call (``archive.studies``); each call is one synced
    transaction. ``on_release`` hears, after the commit, which destinations got jobs
    released by a study that became complete (the archive's routing wakes their senders)."""

    def __init__(
        self, index: Index, on_release: Callable[[Sequence[str]], None] | None = None
    ) -> None:
        self.index = index
        self.on_release = on_release

    def _released(self, names: Iterable[str]) -> None:
        """Tell ``on_release`` of released jobs (after the commit: they are due now)."""
        chosen = sorted(set(names))
        if chosen and self.on_release is not None:
            self.on_release(chosen)

    def mpps_final(
        self,
        step_uid: str,
        study_uids: tuple[str, ...],
        sop_instance_uids: frozenset[str],
        discontinued: bool,
    ) -> None:
        """An MPPS step became COMPLETED or DISCONTINUED: its studies are complete
        (``mpps``) once every instance it references is held; until then they stay
        arriving (the judge gives up on them after ``study.give_up_hours``). The same
        step again replaces what it said before."""
        now = time.time()
        with self.index.transaction() as conn:
            for table in ("study_evidence", "study_evidence_studies", "study_expected"):
                conn.execute(f"DELETE FROM {table} WHERE step_uid = ?", (step_uid,))
            conn.execute(
                "INSERT INTO study_evidence VALUES (?, ?, ?, ?)",
                (step_uid, WAITING, int(discontinued), now),
            )
            conn.executemany(
                "INSERT INTO study_evidence_studies VALUES (?, ?)",
                [(step_uid, study) for study in dict.fromkeys(study_uids)],
            )
            conn.executemany(
                "INSERT INTO study_expected VALUES (?, ?,"
                " EXISTS (SELECT 1 FROM instances WHERE SOPInstanceUID = ?))",
                [(step_uid, sop, sop) for sop in sorted(sop_instance_uids)],
            )
            for study in dict.fromkeys(study_uids):
                _await_evidence(conn, study, now, bool(sop_instance_uids))
            released = _judge_step(conn, step_uid, now, refresh=True)
        self._released(released)

    def commitment_requested(
        self, conn: sqlite3.Connection, sop_uids: Sequence[str]
    ) -> set[str]:
        """Within the transaction recording a modality's commitment request: if every
        instance it lists is held, their studies are complete (``commitment``), unless
        an MPPS step still waits for more of them; the destinations released."""
        return commitment_requested(conn, sop_uids)

    def open_studies(self) -> list[OpenStudy]:
        """Every study arriving or re-opened, for the judge."""
        with self.index.reading() as conn:
            return open_studies(conn)

    def waiting_steps(self) -> list[str]:
        """MPPS steps that still wait for instances."""
        with self.index.reading() as conn:
            return [row[0] for row in conn.execute(
                "SELECT step_uid FROM study_evidence WHERE state = ?", (WAITING,))]

    def complete_quietly(self, study_uid: str, received: int) -> bool:
        """Complete an open study by the quiet rule, if it still has ``received`` instances
        and no MPPS step waits for it (a store that came meanwhile wins); True if done."""
        with self.index.transaction() as conn:
            if _covered(conn, study_uid):
                return False
            released = _complete(conn, study_uid, QUIET, time.time(), received=received)
        self._released(released or ())
        return released is not None

    def give_up(self, step_uid: str) -> None:
        """An MPPS step waited too long: its open studies are complete (``gave-up``), the
        instances it named and nobody sent listed as missing."""
        now = time.time()
        released: set[str] = set()
        with self.index.transaction() as conn:
            changed = conn.execute(
                "UPDATE study_evidence SET state = ? WHERE step_uid = ? AND state = ?",
                (GAVE_UP, step_uid, WAITING),
            ).rowcount
            if changed:
                for study in _step_studies(conn, step_uid):
                    released.update(_complete(conn, study, GAVE_UP, now) or ())
        self._released(released)


def commitment_requested(conn: sqlite3.Connection, sop_uids: Sequence[str]) -> set[str]:
    """See ``StudyBook.commitment_requested``."""
    held = _studies_of(conn, sop_uids)
    released: set[str] = set()
    if not sop_uids or len(held) < len(set(sop_uids)):
        return released  # not all held: the request proves nothing about its studies yet
    per_study: dict[str, int] = {}
    for study in held.values():
        per_study[study] = per_study.get(study, 0) + 1
    now = time.time()
    for study, count in per_study.items():
        if _covered(conn, study):
            continue
        names = _complete(conn, study, COMMITMENT, now)
        if names is not None:
            released.update(names)
            conn.execute(
                "UPDATE study_state SET expected = ? WHERE StudyInstanceUID = ?", (count, study)
            )
    return released


# -- the judge's reads ------------------------------------------------------------------


def open_studies(conn: sqlite3.Connection) -> list[OpenStudy]:
    """Every study arriving or re-opened, with whether an MPPS step waits for it."""
    rows = conn.execute(
        "SELECT s.StudyInstanceUID, s.calling_ae, s.received, s.last_arrival,"
        " EXISTS (SELECT 1 FROM study_evidence_studies l JOIN study_evidence e"
        "  USING (step_uid) WHERE l.StudyInstanceUID = s.StudyInstanceUID AND e.state = ?)"
        " FROM study_state s WHERE s.state IN (?, ?)",
        (WAITING, *OPEN),
    ).fetchall()
    return [OpenStudy(uid, ae, n, last, bool(covered)) for uid, ae, n, last, covered in rows]


def missing(conn: sqlite3.Connection, study_uid: str) -> list[str]:
    """The instances an MPPS step names for this study that the archive does not hold
    (steps that wait, or were given up on), sorted."""
    rows = conn.execute(
        "SELECT DISTINCT x.SOPInstanceUID FROM study_evidence_studies l"
        " JOIN study_evidence e USING (step_uid) JOIN study_expected x USING (step_uid)"
        " WHERE l.StudyInstanceUID = ? AND e.state != ? AND x.held = 0"
        " ORDER BY x.SOPInstanceUID",
        (study_uid, SETTLED),
    ).fetchall()
    return [row[0] for row in rows]


def state_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """How many studies are arriving, re-opened and complete (zeros before migration 8:
    a read-only connection to an index no agent has upgraded yet)."""
    counts = dict.fromkeys((ARRIVING, REOPENED, COMPLETE), 0)
    if not conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'study_state'"
    ).fetchone():
        return counts
    for state, count in conn.execute("SELECT state, count(*) FROM study_state GROUP BY state"):
        counts[state] = int(count)
    return counts


def forget_emptied(conn: sqlite3.Connection) -> None:
    """Drop the rows of studies whose every instance was removed (retention, recovery);
    a study only an MPPS step named so far (nothing received) keeps its row."""
    conn.execute(
        "DELETE FROM study_state WHERE received > 0 AND StudyInstanceUID NOT IN"
        " (SELECT StudyInstanceUID FROM studies)"
    )


# -- helpers ----------------------------------------------------------------------------


def _await_evidence(conn: sqlite3.Connection, study: str, now: float, any_named: bool) -> None:
    """A study an MPPS step names: known from now on; one already complete is re-opened
    until the step's instances are all here (never complete with instances missing)."""
    row = conn.execute(
        "SELECT state FROM study_state WHERE StudyInstanceUID = ?", (study,)
    ).fetchone()
    if row is None:
        if any_named:
            conn.execute(
                "INSERT INTO study_state (StudyInstanceUID, state, changed_at) VALUES (?, ?, ?)",
                (study, ARRIVING, now),
            )
    elif row[0] == COMPLETE:
        conn.execute(
            "UPDATE study_state SET state = ?, reason = NULL, changed_at = ?"
            " WHERE StudyInstanceUID = ?",
            (REOPENED, now, study),
        )


def _complete(
    conn: sqlite3.Connection,
    study: str,
    reason: str,
    now: float,
    *,
    received: int | None = None,
    also_complete: bool = False,
) -> tuple[str, ...] | None:
    """Mark an open study complete for ``reason`` (only if it still has ``received``
    instances, when given; a complete one too with ``also_complete``, to name the better
    reason) and release its held forward jobs; None if no row changed, else the
    destinations that got jobs."""
    states = (*OPEN, COMPLETE) if also_complete else OPEN
    marks = ",".join("?" * len(states))
    sql = (
        "UPDATE study_state SET state = ?, reason = ?, changed_at = ?"
        f" WHERE StudyInstanceUID = ? AND state IN ({marks})"
    )
    args: list[object] = [COMPLETE, reason, now, study, *states]
    if received is not None:
        sql += " AND received = ?"
        args.append(received)
    if not conn.execute(sql, args).rowcount:
        return None
    return release(conn, study, now)


def _covered(conn: sqlite3.Connection, study: str) -> bool:
    """Whether an MPPS step that still waits for instances names this study."""
    return conn.execute(
        "SELECT 1 FROM study_evidence_studies l JOIN study_evidence e USING (step_uid)"
        " WHERE l.StudyInstanceUID = ? AND e.state = ? LIMIT 1",
        (study, WAITING),
    ).fetchone() is not None


def _step_studies(conn: sqlite3.Connection, step: str) -> list[str]:
    return [row[0] for row in conn.execute(
        "SELECT StudyInstanceUID FROM study_evidence_studies WHERE step_uid = ?"
        " ORDER BY StudyInstanceUID", (step,))]


def _missing(conn: sqlite3.Connection, step: str) -> int:
    """How many instances the step names that the archive does not hold."""
    return int(conn.execute(
        "SELECT count(*) FROM study_expected WHERE step_uid = ? AND held = 0", (step,)
    ).fetchone()[0])


def _set_expected(conn: sqlite3.Connection, study: str, step: str) -> None:
    """The study's expected count by the step: its named instances held in this study,
    plus those not held anywhere yet (for a one-study step: all it names)."""
    held_here = int(conn.execute(
        "SELECT count(*) FROM study_expected x JOIN instances i USING (SOPInstanceUID)"
        " JOIN series s ON i.series_pk = s.pk JOIN studies t ON s.study_pk = t.pk"
        " WHERE x.step_uid = ? AND t.StudyInstanceUID = ?", (step, study)
    ).fetchone()[0])
    conn.execute(
        "UPDATE study_state SET expected = ? WHERE StudyInstanceUID = ?",
        (held_here + _missing(conn, step), study),
    )


def _studies_of(conn: sqlite3.Connection, sop_uids: Iterable[str]) -> dict[str, str]:
    """The study of each of ``sop_uids`` the archive holds."""
    found: dict[str, str] = {}
    uids = list(dict.fromkeys(sop_uids))
    for start in range(0, len(uids), 500):
        chunk = uids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        for sop, study in conn.execute(
            "SELECT i.SOPInstanceUID, t.StudyInstanceUID FROM instances i"
            " JOIN series s ON i.series_pk = s.pk JOIN studies t ON s.study_pk = t.pk"
            f" WHERE i.SOPInstanceUID IN ({marks})",
            chunk,
        ):
            found[sop] = study
    return found

