"""Forward jobs held until their study is complete (``forward.when = "complete"``).

``agent.archive.outbox`` queues them (state ``held``, with their study's key) as their
instance is indexed; ``release`` is called by ``agent.archive.studies`` in the very
transaction that makes the study complete, so that a power cut can neither lose a
release nor send a study early. Its own module: the index's migrations import
``studies``, and ``outbox`` imports the index.
"""

from __future__ import annotations

import sqlite3

HELD = "held"


def release(conn: sqlite3.Connection, study_uid: str, now: float) -> tuple[str, ...]:
    """Make a study's held jobs due now; return the destinations that got jobs."""
    key = conn.execute(
        "SELECT pk FROM studies WHERE StudyInstanceUID = ?", (study_uid,)
    ).fetchone()
    if key is None:
        return ()
    names = tuple(row[0] for row in conn.execute(
        "SELECT DISTINCT destination FROM forward_jobs WHERE study_key = ? AND state = ?"
        " ORDER BY destination", (key[0], HELD)))
    if names:
        conn.execute(
            "UPDATE forward_jobs SET state = 'pending', next_attempt = ?"
            " WHERE study_key = ? AND state = ?",
            (now, key[0], HELD),
        )
    return names
