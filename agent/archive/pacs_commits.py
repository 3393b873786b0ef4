"""Storage commitment we ask of destinations: one durable row per (instance, destination).

States: ``awaiting`` (delivered, not yet asked), ``requested`` (asked in a transaction,
no report yet), ``committed``, ``failed`` (with the PS3.4 failure reason). A request whose
report does not come in time goes back to ``awaiting`` and is asked again in a new
transaction. When to ask is decided in ``agent.forward.committer``; this module keeps rows.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

AWAITING, REQUESTED, COMMITTED, FAILED = "awaiting", "requested", "committed", "failed"
STATES = (AWAITING, REQUESTED, COMMITTED, FAILED)
# an awaiting row whose forward job went per study (forward.when = "complete")
_PER_STUDY = (
    "EXISTS (SELECT 1 FROM forward_jobs j WHERE j.SOPInstanceUID = c.SOPInstanceUID"
    " AND j.destination = c.destination AND j.study_key IS NOT NULL)"
)


def migrate(conn: sqlite3.Connection) -> None:
    """The commitment table, keyed by SOP Instance UID like the forward queue."""
    for statement in (
        "CREATE TABLE pacs_commits (SOPInstanceUID TEXT NOT NULL, destination TEXT NOT NULL,"
        " SOPClassUID TEXT NOT NULL, state TEXT NOT NULL, transaction_uid TEXT,"
        " delivered_at REAL NOT NULL, requested_at REAL, settled_at REAL, reason INTEGER,"
        " PRIMARY KEY (SOPInstanceUID, destination))",
        "CREATE INDEX pacs_commits_state ON pacs_commits (destination, state)",
        "CREATE INDEX pacs_commits_transaction ON pacs_commits (transaction_uid)",
    ):
        conn.execute(statement)


@dataclass(frozen=True)
class Pending:
    """Delivered instances of one destination not yet asked about."""

    count: int
    last_delivered_at: float | None


@dataclass(frozen=True)
class Failure:
    """An instance a destination would not commit, for the queue listing."""

    destination: str
    sop_instance_uid: str
    reason: int
    settled_at: float


@dataclass(frozen=True)
class Settled:
    """What one report settled."""

    destination: str | None
    committed: int
    failed: int


class Database(Protocol):
    """What this module needs of ``agent.archive.index.Index`` (which imports it for the
    migration: a Protocol keeps the import one way)."""

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """One write transaction."""

    def reading(self) -> AbstractContextManager[sqlite3.Connection]:
        """A quick read."""


class PacsCommits:
    """The commitment rows of one index."""

    def __init__(self, index: Database) -> None:
        self.index = index

    def delivered(self, sop_uid: str, sop_class: str, destination: str, now: float) -> None:
        """An instance reached a commit-enabled destination: ask about it (again)."""
        with self.index.transaction() as conn:
            conn.execute(
                "INSERT INTO pacs_commits (SOPInstanceUID, destination, SOPClassUID, state,"
                " delivered_at) VALUES (?, ?, ?, 'awaiting', ?)"
                " ON CONFLICT (SOPInstanceUID, destination) DO UPDATE SET state = 'awaiting',"
                " delivered_at = excluded.delivered_at, transaction_uid = NULL,"
                " requested_at = NULL, settled_at = NULL, reason = NULL",
                (sop_uid, destination, sop_class, now),
            )

    def adopt_delivered(self, destination: str) -> int:
        """Instances delivered to ``destination`` before it was asked for commitment (say,
        before ``commit = true`` was set) get a row too, so that they are asked about and
        ``retain_until = "committed"`` can free them in time; how many were added."""
        with self.index.transaction() as conn:
            return max(0, conn.execute(
                "INSERT INTO pacs_commits (SOPInstanceUID, destination, SOPClassUID, state,"
                " delivered_at) SELECT j.SOPInstanceUID, j.destination, i.SOPClassUID,"
                " 'awaiting', coalesce(j.done_at, j.created_at) FROM forward_jobs j"
                " JOIN instances i ON i.SOPInstanceUID = j.SOPInstanceUID"
                " WHERE j.destination = ? AND j.state = 'done' AND NOT EXISTS (SELECT 1"
                "  FROM pacs_commits c WHERE c.SOPInstanceUID = j.SOPInstanceUID"
                "  AND c.destination = j.destination)",
                (destination,),
            ).rowcount)

    def pending(self, destination: str) -> Pending:
        """How many delivered instances wait to be asked about, and the latest delivery
        (those sent per study excepted: ``study_batch`` asks for them)."""
        with self.index.reading() as conn:
            count, last = conn.execute(
                "SELECT count(*), max(delivered_at) FROM pacs_commits c"
                f" WHERE destination = ? AND state = 'awaiting' AND NOT {_PER_STUDY}",
                (destination,),
            ).fetchone()
        return Pending(int(count), last)

    def batch(self, destination: str, limit: int) -> list[tuple[str, str]]:
        """(SOP Class UID, SOP Instance UID) of waiting instances, a study's together."""
        with self.index.reading() as conn:
            rows = conn.execute(
                "SELECT c.SOPClassUID, c.SOPInstanceUID FROM pacs_commits c"
                " LEFT JOIN instances i ON i.SOPInstanceUID = c.SOPInstanceUID"
                f" WHERE c.destination = ? AND c.state = 'awaiting' AND NOT {_PER_STUDY}"
                " ORDER BY i.series_pk, c.delivered_at LIMIT ?",
                (destination, limit),
            ).fetchall()
        return [(row[0], row[1]) for row in rows]

    def study_batch(self, destination: str, limit: int) -> list[tuple[str, str]]:
        """(SOP Class UID, SOP Instance UID) of the waiting instances of one study sent
        per study (``forward.when = "complete"``), once every job of that study to
        ``destination`` was delivered (none held, pending or retrying): one request per
        complete study. Empty while no such study is ready."""
        with self.index.reading() as conn:
            ready = conn.execute(
                "SELECT j.study_key FROM pacs_commits c JOIN forward_jobs j"
                " ON j.SOPInstanceUID = c.SOPInstanceUID AND j.destination = c.destination"
                " WHERE c.destination = ? AND c.state = 'awaiting' AND j.study_key IS NOT NULL"
                " AND NOT EXISTS (SELECT 1 FROM forward_jobs k WHERE k.study_key = j.study_key"
                "  AND k.destination = j.destination AND k.state IN ('held', 'pending',"
                "  'retrying')) ORDER BY c.delivered_at LIMIT 1",
                (destination,),
            ).fetchone()
            if ready is None:
                return []
            rows = conn.execute(
                "SELECT c.SOPClassUID, c.SOPInstanceUID FROM pacs_commits c JOIN forward_jobs j"
                " ON j.SOPInstanceUID = c.SOPInstanceUID AND j.destination = c.destination"
                " WHERE c.destination = ? AND c.state = 'awaiting' AND j.study_key = ?"
                " ORDER BY c.delivered_at LIMIT ?",
                (destination, ready[0], limit),
            ).fetchall()
        return [(row[0], row[1]) for row in rows]

    def requested(
        self, sop_uids: Iterable[str], destination: str, transaction_uid: str, now: float
    ) -> None:
        """These instances were asked about in ``transaction_uid``."""
        with self.index.transaction() as conn:
            conn.executemany(
                "UPDATE pacs_commits SET state = 'requested', transaction_uid = ?,"
                " requested_at = ? WHERE SOPInstanceUID = ? AND destination = ?",
                [(transaction_uid, now, uid, destination) for uid in sop_uids],
            )

    def settle(
        self,
        transaction_uid: str,
        committed: Collection[str],
        failed: Mapping[str, int],
        reporter: str,
        now: float,
    ) -> Settled:
        """A report from the peer ``reporter`` on ``transaction_uid``: the instances it lists
        as committed and those that failed, with their reasons. Instances it does not
        list stay requested (asked again after the report timeout). A report for an
        unknown or superseded transaction, or from another peer than the one asked,
        settles nothing."""
        with self.index.transaction() as conn:
            row = conn.execute(
                "SELECT destination FROM pacs_commits WHERE transaction_uid = ? LIMIT 1",
                (transaction_uid,),
            ).fetchone()
            if row is None or str(row[0]) != reporter:
                return Settled(None if row is None else str(row[0]), 0, 0)
            bad = conn.executemany(
                "UPDATE pacs_commits SET state = 'failed', reason = ?, settled_at = ?"
                " WHERE transaction_uid = ? AND SOPInstanceUID = ? AND state = 'requested'",
                [(reason, now, transaction_uid, uid) for uid, reason in failed.items()],
            ).rowcount
            good = conn.executemany(
                "UPDATE pacs_commits SET state = 'committed', reason = NULL, settled_at = ?"
                " WHERE transaction_uid = ? AND SOPInstanceUID = ? AND state = 'requested'",
                [(now, transaction_uid, uid) for uid in committed if uid not in failed],
            ).rowcount
        return Settled(str(row[0]), max(good, 0), max(bad, 0))

    def study_references(self, study_uid: str) -> list[tuple[str, str]]:
        """(SOP Class UID, SOP Instance UID) of every archived instance of a study."""
        with self.index.reading() as conn:
            rows = conn.execute(
                "SELECT i.SOPClassUID, i.SOPInstanceUID FROM instances i"
                " JOIN series se ON i.series_pk = se.pk JOIN studies st ON se.study_pk = st.pk"
                " WHERE st.StudyInstanceUID = ? ORDER BY i.pk",
                (study_uid,),
            ).fetchall()
        return [(row[0], row[1]) for row in rows]

    def asked_by_hand(
        self, refs: Sequence[tuple[str, str]], destination: str, transaction_uid: str, now: float
    ) -> None:
        """``edge-agent commit``: these instances are asked about in ``transaction_uid``,
        whether or not a forward delivered them."""
        with self.index.transaction() as conn:
            conn.executemany(
                "INSERT INTO pacs_commits (SOPInstanceUID, destination, SOPClassUID, state,"
                " transaction_uid, delivered_at, requested_at) VALUES (?, ?, ?, 'requested',"
                " ?, ?, ?) ON CONFLICT (SOPInstanceUID, destination) DO UPDATE"
                " SET state = 'requested', transaction_uid = excluded.transaction_uid,"
                " requested_at = excluded.requested_at, settled_at = NULL, reason = NULL",
                [(uid, destination, cls, transaction_uid, now, now) for cls, uid in refs],
            )

    def withdraw(self, transaction_uid: str) -> None:
        """A request that never reached the destination: its instances wait again."""
        with self.index.transaction() as conn:
            conn.execute(
                "UPDATE pacs_commits SET state = 'awaiting', transaction_uid = NULL,"
                " requested_at = NULL WHERE transaction_uid = ? AND state = 'requested'",
                (transaction_uid,),
            )

    def ask_again(self, destination: str, requested_before: float) -> int:
        """Requests without a report since ``requested_before`` wait to be asked again.

        The committer calls this twice a second: look first, so that the write lock (which
        every ingest also needs) is taken only when there is something to re-arm."""
        where = " WHERE destination = ? AND state = 'requested' AND requested_at < ?"
        with self.index.reading() as conn:
            if conn.execute(f"SELECT 1 FROM pacs_commits{where} LIMIT 1",
                            (destination, requested_before)).fetchone() is None:
                return 0
        with self.index.transaction() as conn:
            return conn.execute(
                "UPDATE pacs_commits SET state = 'awaiting', transaction_uid = NULL,"
                f" requested_at = NULL{where}",
                (destination, requested_before),
            ).rowcount

    def counts(self) -> dict[str, dict[str, int]]:
        """Rows per destination and state."""
        counts: dict[str, dict[str, int]] = {}
        with self.index.reading() as conn:
            for destination, state, count in conn.execute(
                "SELECT destination, state, count(*) FROM pacs_commits"
                " GROUP BY destination, state"
            ):
                counts.setdefault(destination, {})[state] = count
        return counts

    def states_of(self, transaction_uid: str) -> dict[str, int]:
        """Rows of one transaction per state (a CLI waiting for its report polls this)."""
        with self.index.reading() as conn:
            rows = conn.execute(
                "SELECT state, count(*) FROM pacs_commits WHERE transaction_uid = ?"
                " GROUP BY state",
                (transaction_uid,),
            ).fetchall()
        return {state: count for state, count in rows}

    def transaction_failures(self, transaction_uid: str) -> dict[str, int]:
        """The failed instances of one transaction and their reasons."""
        with self.index.reading() as conn:
            rows = conn.execute(
                "SELECT SOPInstanceUID, reason FROM pacs_commits"
                " WHERE transaction_uid = ? AND state = 'failed'",
                (transaction_uid,),
            ).fetchall()
        return {uid: int(reason) for uid, reason in rows}

    def failures(self, limit: int = 50) -> list[Failure]:
        """Instances a destination would not commit, the latest first."""
        with self.index.reading() as conn:
            rows = conn.execute(
                "SELECT destination, SOPInstanceUID, reason, settled_at FROM pacs_commits"
                " WHERE state = 'failed' ORDER BY settled_at DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [Failure(*row) for row in rows]

    def committed_everywhere(
        self, sop_uids: Collection[str], destinations: Collection[str]
    ) -> set[str]:
        """Which of ``sop_uids`` every one of ``destinations`` (the commit-enabled ones) has
        committed; with no such destination, none (nothing can be committed)."""
        if not destinations:
            return set()
        wanted = sorted(set(destinations))
        marks = ", ".join("?" for _ in wanted)
        found: set[str] = set()
        uids = list(sop_uids)
        with self.index.reading() as conn:
            for start in range(0, len(uids), 500):
                chunk = uids[start : start + 500]
                rows = conn.execute(
                    "SELECT SOPInstanceUID FROM pacs_commits WHERE state = 'committed'"
                    f" AND destination IN ({marks}) AND SOPInstanceUID IN"
                    f" ({', '.join('?' for _ in chunk)}) GROUP BY SOPInstanceUID"
                    " HAVING count(DISTINCT destination) = ?",
                    (*wanted, *chunk, len(wanted)),
                ).fetchall()
                found.update(row[0] for row in rows)
        return found


def committed_clause(destinations: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """An SQL condition on ``i`` (instances) that every destination committed it, and its
    parameters; empty for no destinations (retention by delivery alone)."""
    if not destinations:
        return "", ()
    condition = " AND ".join(
        "EXISTS (SELECT 1 FROM pacs_commits c WHERE c.SOPInstanceUID = i.SOPInstanceUID"
        " AND c.destination = ? AND c.state = 'committed')"
        for _ in destinations
    )
    return condition, tuple(destinations)
