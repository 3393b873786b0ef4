"""The studies ``edge-agent studies`` lists: their state, counts, missing instances and
forwarding per destination, read from the index."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from agent.archive.index import Index, connect
from agent.archive.studies import OPEN, missing, state_counts


@dataclass(frozen=True)
class StudyRow:
    """One study as the index knows it (patient name included: the caller decides)."""

    study_instance_uid: str
    state: str
    reason: str | None
    received: int
    expected: int | None
    missing: tuple[str, ...]
    calling_ae: str
    last_arrival: str | None  # ISO 8601, as the instance rows keep it
    changed_at: float  # when its state last changed (time.time())
    accession_number: str | None = None
    patient_name: str | None = None
    forwarding: dict[str, dict[str, int]] = field(default_factory=dict)  # destination: state: n


def studies_at(path: Path, since: float | None, limit: int) -> list[StudyRow]:
    """``list_studies`` from the index at ``path`` (upgraded first, as any opening does)."""
    with Index(path) as index, index.reading() as conn:
        return list_studies(conn, since, limit)


def list_studies(conn: sqlite3.Connection, since: float | None, limit: int) -> list[StudyRow]:
    """Open studies and those whose state changed at or after ``since`` (every study when
    None), newest arrival first, at most ``limit``."""
    marks = ",".join("?" * len(OPEN))
    where = "" if since is None else f" WHERE s.state IN ({marks}) OR s.changed_at >= ?"
    args: list[object] = [] if since is None else [*OPEN, since]
    rows = conn.execute(
        "SELECT s.StudyInstanceUID, s.state, s.reason, s.received, s.expected, s.calling_ae,"
        " s.last_arrival, s.changed_at, t.AccessionNumber, p.PatientName, t.pk"
        " FROM study_state s LEFT JOIN studies t ON t.StudyInstanceUID = s.StudyInstanceUID"
        f" LEFT JOIN patients p ON p.pk = t.patient_pk{where}"
        " ORDER BY coalesce(s.last_arrival, '') DESC, s.changed_at DESC LIMIT ?",
        (*args, limit),
    ).fetchall()
    return [
        StudyRow(uid, state, reason, received, expected, tuple(missing(conn, uid)), ae, last,
                 changed, accession or None, name or None, _forwarding(conn, study_pk))
        for uid, state, reason, received, expected, ae, last, changed, accession, name, study_pk
        in rows
    ]


def _forwarding(conn: sqlite3.Connection, study_pk: int | None) -> dict[str, dict[str, int]]:
    """Forward jobs of the study's instances, per destination and state."""
    if study_pk is None:
        return {}
    found: dict[str, dict[str, int]] = {}
    for destination, state, count in conn.execute(
        "SELECT j.destination, j.state, count(*) FROM forward_jobs j"
        " JOIN instances i ON i.SOPInstanceUID = j.SOPInstanceUID"
        " JOIN series s ON i.series_pk = s.pk WHERE s.study_pk = ?"
        " GROUP BY j.destination, j.state ORDER BY j.destination, j.state",
        (study_pk,),
    ):
        found.setdefault(destination, {})[state] = int(count)
    return found


def state_counts_at(path: Path) -> dict[str, int]:
    """How many studies are arriving, re-opened and complete, over a read-only connection
    of its own (``edge-agent status`` beside a running agent)."""
    conn = connect(path, readonly=True)
    try:
        return state_counts(conn)
    finally:
        conn.close()
