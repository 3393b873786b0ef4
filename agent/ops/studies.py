"""The studies: which are arriving, which are complete and why, what is missing, and how
far each is forwarded (``edge-agent studies``, the console's ``studies``).

The patient's name is shown only when asked for (``--phi``; the console, which sits
beside the box, always): otherwise a study is named by its accession number and UID.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Any

from agent.archive import Layout
from agent.archive.study_list import StudyRow, studies_at

RECENT_HOURS = 24.0  # complete studies are listed this long after they completed
LIMIT = 500
NO_ARCHIVE = "no studies (no archive yet)"


@dataclass(frozen=True)
class StudiesListing:
    """Open studies and recently complete ones (or every study), newest arrival first."""

    rows: tuple[StudyRow, ...]
    phi: bool = False  # the patient's name is shown
    every: bool = False  # every study, not only open and recently complete ones
    archive: bool = True  # False: there is no archive (index) yet
    taken_at: float = field(default_factory=time.time, compare=False)

    def to_json(self) -> list[dict[str, Any]]:
        """One object per study, as ``edge-agent studies --json`` prints them."""
        return [self._object(row) for row in self.rows]

    def _object(self, row: StudyRow) -> dict[str, Any]:
        found: dict[str, Any] = {
            "study_instance_uid": row.study_instance_uid,
            "state": row.state,
            "reason": row.reason,
            "received": row.received,
            "expected": row.expected,
            "missing": list(row.missing),
            "accession_number": row.accession_number,
            "calling_ae": row.calling_ae or None,
            "last_arrival": row.last_arrival,
            "changed_at": _iso(row.changed_at),
            "forwarding": row.forwarding,
        }
        if self.phi:
            found["patient_name"] = row.patient_name
        return found

    def lines(self) -> list[str]:
        """The listing as text, as the CLI prints it and the console shows it."""
        if not self.archive:
            return [NO_ARCHIVE]
        if not self.rows:
            recent = "" if self.every else f" in the last {RECENT_HOURS:g} hours"
            return [f"no studies arriving or complete{recent}"]
        lines = [f"{'state':9} {'reason':10} {'received':>9}  {'accession':16} study"]
        for row in self.rows:
            lines += self._row_lines(row)
        return lines

    def _row_lines(self, row: StudyRow) -> list[str]:
        expected = "?" if row.expected is None else str(row.expected)
        counts = f"{row.received}/{expected}"
        name = f"  {row.patient_name}" if self.phi and row.patient_name else ""
        lines = [
            f"{row.state:9} {row.reason or '-':10} {counts:>9}  "
            f"{row.accession_number or '-':16} {row.study_instance_uid}{name}"
        ]
        if row.last_arrival:
            lines.append(f"  last instance {row.last_arrival} from {row.calling_ae or '?'}")
        lines += [f"  missing {sop}" for sop in row.missing]
        for destination, states in row.forwarding.items():
            summary = ", ".join(f"{count} {state}" for state, count in states.items())
            lines.append(f"  forward {destination}: {summary}")
        return lines


def studies(
    layout: Layout, *, phi: bool = False, every: bool = False, limit: int = LIMIT
) -> StudiesListing:
    """The studies arriving, re-opened or complete in the last ``RECENT_HOURS`` (every
    study with ``every``), at most ``limit``."""
    if not layout.index_path.exists():
        return StudiesListing((), phi, every, archive=False)
    since = None if every else time.time() - RECENT_HOURS * 3600.0
    return StudiesListing(tuple(studies_at(layout.index_path, since, limit)), phi, every)


def _iso(epoch: float) -> str:
    """A time as the index writes arrival times: ISO 8601, UTC, to the second."""
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).isoformat(timespec="seconds")
