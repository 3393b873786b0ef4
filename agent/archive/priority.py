"""The jobs a destination's ``priority`` rule lets out of its send windows: due jobs whose
instance's indexed attributes match every pattern (``*`` and ``?``, case-sensitive, as
``[[forward.rules]]`` match; an absent value matches as empty text).

Evaluated on the index each time a sender looks, not stored with the job: a reload that
changes the rule applies at once to every job still waiting, and no migration was needed.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from agent.archive.keys import KEYS
from agent.archive.matching import glob_pattern
from agent.dicom.models import Level

_ALIAS = {Level.STUDY: "st", Level.SERIES: "se", Level.IMAGE: "i"}

# keyword -> the qualified column (in the query below) of each key a rule may match
COLUMNS = {
    key.keyword: f"{_ALIAS[level]}.{key.keyword}"
    for level, keys in KEYS.items() if level in _ALIAS
    for key in keys if key.vr != "SQ"
}


def due_rows(
    conn: sqlite3.Connection,
    destination: str,
    now: float,
    limit: int,
    lane: tuple[int, int],
    rule: Sequence[tuple[str, str]],
) -> list[tuple[Any, ...]]:
    """Rows of ``outbox.Job`` for the lane's (number, of) due jobs the rule matches, a
    study's together in series and instance order; none for an empty rule."""
    if not rule:
        return []
    conditions = " AND ".join(f"coalesce({COLUMNS[keyword]}, '') GLOB ?" for keyword, _ in rule)
    patterns = [glob_pattern(pattern) for _, pattern in rule]
    number, of = lane
    return conn.execute(
        "SELECT j.pk, j.SOPInstanceUID, j.destination, j.attempts, i.path, i.SOPClassUID,"
        " i.transfer_syntax, st.StudyInstanceUID FROM forward_jobs j"
        " JOIN instances i ON i.SOPInstanceUID = j.SOPInstanceUID"
        " JOIN series se ON i.series_pk = se.pk JOIN studies st ON se.study_pk = st.pk"
        " WHERE j.destination = ? AND j.state IN ('pending', 'retrying') AND j.next_attempt <= ?"
        f" AND coalesce(j.study_key, j.pk) % ? = ? AND {conditions} ORDER BY st.pk,"
        " CAST(se.SeriesNumber AS INTEGER), se.pk, CAST(i.InstanceNumber AS INTEGER), i.pk"
        " LIMIT ?",
        (destination, now, of, number, *patterns, limit),
    ).fetchall()
