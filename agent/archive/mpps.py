"""Modality Performed Procedure Steps the modalities told us of (PS3.4 Annex F): each step
as received and merged by every N-SET, with its status, caller and times.

A step is written, synced to disk, before its N-CREATE or N-SET is answered, so what a
modality was told is recorded survives a power cut; a refused request writes nothing.
Its attributes are kept as DICOM JSON (PS3.18 F), the study and instance UIDs it names
beside them for those who read steps without DICOM (``studies``, completeness).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

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


def migrate(conn: sqlite3.Connection) -> None:
    """The MPPS steps table (idempotent)."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS mpps_steps (sop_instance_uid TEXT PRIMARY KEY,"
        " status TEXT NOT NULL, calling_ae TEXT NOT NULL, study_uids TEXT NOT NULL,"
        " instance_uids TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL,"
        " final_at REAL, attributes TEXT NOT NULL)"
    )


def create(index: Index, step: Step) -> bool:
    """Record a new step, synced before this returns; False (writing nothing) if a step
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
    return True


def update(index: Index, uid: str, change: Callable[[Step], Step | T]) -> Step | T | None:
    """Apply ``change`` to the recorded step ``uid`` in one transaction: a Step it returns
    replaces the record (synced before this returns), anything else (a refusal) writes
    nothing and is returned. None if no such step is recorded."""
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
