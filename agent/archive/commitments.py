"""Incoming Storage Commitment transactions: recorded durably before we answer the
N-ACTION, decided per instance against the archive, and kept until their report is sent.

Only what is durably indexed, with the SOP class the requestor named, is committed; the
peer's ``commit_when`` may make us wait for delivery to (or commitment by) every
forward destination, and ``commit_give_up_hours`` bounds that wait.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

from agent.archive import studies
from agent.dicom.status import (
    CLASS_INSTANCE_CONFLICT,
    NO_SUCH_OBJECT_INSTANCE,
    PROCESSING_FAILURE,
)


class Index(Protocol):
    """What this module needs of agent.archive.index.Index (which imports this module
    for its migration, so it is named by shape, not imported)."""

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]: ...

    def reading(self) -> AbstractContextManager[sqlite3.Connection]: ...

PENDING, REPORTED = "pending", "reported"
STORED, FORWARDED, PACS_COMMITTED = "stored", "forwarded", "pacs-committed"


@dataclass(frozen=True)
class Transaction:
    """One commitment request as recorded: who asked, for what, and when."""

    uid: str
    peer: str
    items: tuple[tuple[str, str], ...]  # (SOP Class UID, SOP Instance UID), as requested
    received_at: float
    attempts: int


@dataclass
class Decision:
    """Per instance: committed, failed with a reason, or still waiting."""

    committed: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str, int]] = field(default_factory=list)
    waiting: list[tuple[str, str]] = field(default_factory=list)

    @property
    def settled(self) -> bool:
        """True when every instance is decided: the report can go."""
        return not self.waiting


def migrate(conn: sqlite3.Connection) -> None:
    """The commitment transactions we owe a report, and their instances (idempotent)."""
    for statement in (
        "CREATE TABLE IF NOT EXISTS commitments (transaction_uid TEXT PRIMARY KEY,"
        " peer TEXT NOT NULL, received_at REAL NOT NULL, state TEXT NOT NULL,"
        " attempts INTEGER NOT NULL"
        " DEFAULT 0, next_attempt REAL NOT NULL, reported_at REAL, last_error TEXT)",
        "CREATE TABLE IF NOT EXISTS commitment_items (transaction_uid TEXT NOT NULL,"
        " position INTEGER NOT NULL, SOPClassUID TEXT NOT NULL, SOPInstanceUID TEXT NOT NULL,"
        " PRIMARY KEY (transaction_uid, position))",
        "CREATE INDEX IF NOT EXISTS commitments_due ON commitments (state, next_attempt)",
    ):
        conn.execute(statement)


NEW, REPEATED, CONFLICTING = "new", "repeated", "conflicting"


def record(
    index: Index,
    uid: str,
    peer: str,
    items: Sequence[tuple[str, str]],
    now: float,
    released: Callable[[Sequence[str]], None] | None = None,
) -> str:
    """Record a transaction durably (committed to disk on return): NEW; or, if its UID is
    known, REPEATED (same peer and instances: a retry) or CONFLICTING, writing nothing.
    A request that completes studies releases their held forward jobs in the same
    transaction; ``released`` then hears the destinations, after the commit."""
    with index.transaction() as conn:
        known = conn.execute(
            "SELECT peer FROM commitments WHERE transaction_uid = ?", (uid,)
        ).fetchone()
        if known is not None:
            same = known[0] == peer and _transaction(conn, uid, peer, 0, 0).items == tuple(items)
            return REPEATED if same else CONFLICTING
        conn.execute(
            "INSERT INTO commitments (transaction_uid, peer, received_at, state, next_attempt)"
            " VALUES (?, ?, ?, ?, ?)",
            (uid, peer, now, PENDING, now),
        )
        conn.executemany(
            "INSERT INTO commitment_items VALUES (?, ?, ?, ?)",
            [(uid, n, sop_class, sop_uid) for n, (sop_class, sop_uid) in enumerate(items)],
        )
        names = studies.commitment_requested(conn, [sop_uid for _cls, sop_uid in items])
    if names and released is not None:
        released(sorted(names))
    return NEW


def due(index: Index, now: float, limit: int = 50) -> list[Transaction]:
    """Pending transactions whose next report attempt is due, oldest first."""
    with index.reading() as conn:
        rows = conn.execute(
            "SELECT transaction_uid, peer, received_at, attempts FROM commitments"
            " WHERE state = ? AND next_attempt <= ? ORDER BY received_at LIMIT ?",
            (PENDING, now, limit),
        ).fetchall()
        return [_transaction(conn, *row) for row in rows]


def _transaction(
    conn: sqlite3.Connection, uid: str, peer: str, received_at: float, attempts: int
) -> Transaction:
    items = conn.execute(
        "SELECT SOPClassUID, SOPInstanceUID FROM commitment_items"
        " WHERE transaction_uid = ? ORDER BY position",
        (uid,),
    ).fetchall()
    return Transaction(uid, peer, tuple((c, i) for c, i in items), received_at, attempts)


def decide(
    index: Index, tx: Transaction, commit_when: str, give_up_hours: float, now: float
) -> Decision:
    """Judge every instance of ``tx`` now; past the give-up time, waiting ones fail (0x0110)."""
    uids = [sop_uid for _cls, sop_uid in tx.items]
    with index.reading() as conn:
        stored = _stored_classes(conn, uids)
        settled = _settled(conn, uids, commit_when)
    decision = Decision()
    expired = now - tx.received_at >= give_up_hours * 3600.0
    for sop_class, sop_uid in tx.items:
        held = stored.get(sop_uid)
        if held is None:
            decision.failed.append((sop_class, sop_uid, NO_SUCH_OBJECT_INSTANCE))
        elif held != sop_class:
            decision.failed.append((sop_class, sop_uid, CLASS_INSTANCE_CONFLICT))
        elif sop_uid in settled:
            decision.committed.append((sop_class, sop_uid))
        elif expired:
            decision.failed.append((sop_class, sop_uid, PROCESSING_FAILURE))
        else:
            decision.waiting.append((sop_class, sop_uid))
    return decision


def _stored_classes(conn: sqlite3.Connection, uids: Sequence[str]) -> dict[str, str]:
    """The SOP class each of ``uids`` is indexed with, for those durably in the archive."""
    found: dict[str, str] = {}
    for chunk in _chunks(uids):
        marks = ",".join("?" * len(chunk))
        for sop_uid, sop_class in conn.execute(
            f"SELECT SOPInstanceUID, SOPClassUID FROM instances WHERE SOPInstanceUID IN ({marks})",
            chunk,
        ):
            found[sop_uid] = sop_class
    return found


def _settled(conn: sqlite3.Connection, uids: Sequence[str], commit_when: str) -> set[str]:
    """Which of ``uids`` the policy lets us commit (all of them for "stored")."""
    if commit_when == FORWARDED:
        return forwarded(conn, uids)
    if commit_when == PACS_COMMITTED:
        return pacs_committed(conn, uids)
    return set(uids)


def forwarded(conn: sqlite3.Connection, uids: Sequence[str]) -> set[str]:
    """The instances every forward destination has confirmed (no job left undone)."""
    unsent: set[str] = set()
    for chunk in _chunks(uids):
        marks = ",".join("?" * len(chunk))
        unsent.update(
            row[0]
            for row in conn.execute(
                "SELECT DISTINCT SOPInstanceUID FROM forward_jobs"
                f" WHERE state != 'done' AND SOPInstanceUID IN ({marks})",
                chunk,
            )
        )
    return set(uids) - unsent


def pacs_committed(conn: sqlite3.Connection, uids: Sequence[str]) -> set[str]:
    """The instances every destination they were forwarded to has itself committed
    (``agent.archive.pacs_commits``): one forward job at least, each done and committed.
    A destination without ``commit = true`` never commits, so its instances wait."""
    found: set[str] = set()
    for chunk in _chunks(uids):
        marks = ",".join("?" * len(chunk))
        found.update(
            row[0]
            for row in conn.execute(
                "SELECT DISTINCT j.SOPInstanceUID FROM forward_jobs j"
                f" WHERE j.SOPInstanceUID IN ({marks}) AND NOT EXISTS ("
                "  SELECT 1 FROM forward_jobs o WHERE o.SOPInstanceUID = j.SOPInstanceUID"
                "  AND (o.state != 'done' OR NOT EXISTS (SELECT 1 FROM pacs_commits c"
                "   WHERE c.SOPInstanceUID = o.SOPInstanceUID"
                "   AND c.destination = o.destination AND c.state = 'committed')))",
                chunk,
            )
        )
    return found


def mark_reported(index: Index, uid: str, now: float) -> None:
    """The peer answered our N-EVENT-REPORT: the transaction is done."""
    with index.transaction() as conn:
        conn.execute(
            "UPDATE commitments SET state = ?, reported_at = ?, attempts = attempts + 1,"
            " last_error = NULL WHERE transaction_uid = ?",
            (REPORTED, now, uid),
        )


def reschedule(index: Index, uid: str, next_attempt: float, error: str | None = None) -> None:
    """Try this transaction again at ``next_attempt`` (a failed attempt counts if ``error``)."""
    with index.transaction() as conn:
        conn.execute(
            "UPDATE commitments SET next_attempt = ?, attempts = attempts + ?,"
            " last_error = coalesce(?, last_error) WHERE transaction_uid = ?",
            (next_attempt, 0 if error is None else 1, None if error is None else error[:500], uid),
        )


def rearm(index: Index, now: float) -> int:
    """Make every pending transaction due now (after a restart: report what waited)."""
    with index.transaction() as conn:
        return conn.execute(
            "UPDATE commitments SET next_attempt = ? WHERE state = ?", (now, PENDING)
        ).rowcount


def counts(index: Index) -> dict[str, int]:
    """How many transactions are pending and reported."""
    with index.reading() as conn:
        rows = conn.execute("SELECT state, count(*) FROM commitments GROUP BY state").fetchall()
    return {PENDING: 0, REPORTED: 0, **{state: n for state, n in rows}}


def _chunks(uids: Sequence[str], size: int = 500) -> list[list[str]]:
    return [list(uids[n : n + size]) for n in range(0, len(uids), size)]
