"""Modality Performed Procedure Step rules (PS3.4 F.7.2, Table F.7.2-1): what an N-CREATE
and an N-SET must and may carry, and what a step must hold to become COMPLETED or
DISCONTINUED. Pure functions on pydicom data sets: the SCP (agent/net/mpps_scp.py)
answers with the refusal they return, and the archive records what they accept.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from agent.dicom.status import (
    INVALID_ATTRIBUTE_VALUE,
    MAY_NO_LONGER_BE_UPDATED,
    MAY_NO_LONGER_BE_UPDATED_COMMENT,
    MISSING_ATTRIBUTE,
    MISSING_ATTRIBUTE_VALUE,
    NO_SUCH_ATTRIBUTE,
    PROCESSING_FAILURE,
)

IN_PROGRESS, COMPLETED, DISCONTINUED = "IN PROGRESS", "COMPLETED", "DISCONTINUED"
STATUSES = (IN_PROGRESS, COMPLETED, DISCONTINUED)
FINAL = (COMPLETED, DISCONTINUED)
COMMENT_LENGTH = 64  # Error Comment is LO

# Type 1 for the N-CREATE (Table F.7.2-1, SCU column): present and with a value
CREATE_REQUIRED = (
    "ScheduledStepAttributesSequence",
    "PerformedProcedureStepID",
    "PerformedStationAETitle",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "PerformedProcedureStepStatus",
    "Modality",
)
# "Not allowed" in an N-SET (Table F.7.2-1): fixed once the step is created
SET_NOT_ALLOWED = (
    "ScheduledStepAttributesSequence",
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "PatientBirthDate",
    "PatientSex",
    "ReferencedPatientSequence",
    "AdmissionID",
    "IssuerOfAdmissionIDSequence",
    "ServiceEpisodeID",
    "IssuerOfServiceEpisodeIDSequence",
    "ServiceEpisodeDescription",
    "PerformedProcedureStepID",
    "PerformedStationAETitle",
    "PerformedStationName",
    "PerformedLocation",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "Modality",
    "StudyID",
    "SOPInstanceUID",
    "SOPClassUID",
)
# Type 1 in the final state (Table F.7.2-1, "Final State" notes): when the status is set
# to COMPLETED or DISCONTINUED the step as merged must hold these, and one series at least
FINAL_REQUIRED = (
    "PerformedProcedureStepEndDate",
    "PerformedProcedureStepEndTime",
    "PerformedSeriesSequence",
)
SERIES_REQUIRED = ("SeriesInstanceUID", "ProtocolName")  # Type 1 in each series item
REFERENCES = ("ReferencedImageSequence", "ReferencedNonImageCompositeSOPInstanceSequence")
REFERENCE_REQUIRED = ("ReferencedSOPClassUID", "ReferencedSOPInstanceUID")


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused: the DIMSE status and an Error Comment for the SCU."""

    status: int
    comment: str
    error_id: int | None = None  # Error ID (0000,0903), where the standard names one

    def __post_init__(self) -> None:
        object.__setattr__(self, "comment", self.comment[:COMMENT_LENGTH])


def check_create(ds: Dataset) -> Refusal | None:
    """An N-CREATE's Attribute List: Type 1 attributes present, status IN PROGRESS."""
    found = _missing(ds, CREATE_REQUIRED, "") or _missing_in_items(
        ds, "ScheduledStepAttributesSequence", ("StudyInstanceUID",)
    )
    if found is not None:
        return found
    status = status_of(ds)
    if status != IN_PROGRESS:
        return Refusal(INVALID_ATTRIBUTE_VALUE, f"N-CREATE status must be IN PROGRESS: {status}")
    return _check_series(ds)


# an N-SET of a step that is COMPLETED or DISCONTINUED (PS3.4 F.7.2.2.3 and F.7.2.2.4)
FINAL_ALREADY = Refusal(
    PROCESSING_FAILURE, MAY_NO_LONGER_BE_UPDATED_COMMENT, MAY_NO_LONGER_BE_UPDATED
)


def check_set(ds: Dataset) -> Refusal | None:
    """An N-SET's Modification List on its own: nothing it may not set, a known status."""
    refused = [keyword for keyword in SET_NOT_ALLOWED if keyword in ds]
    if refused:
        return Refusal(NO_SUCH_ATTRIBUTE, "may not be set by N-SET: " + _tags(refused))
    if "PerformedProcedureStepStatus" in ds and status_of(ds) not in STATUSES:
        return Refusal(INVALID_ATTRIBUTE_VALUE, f"unknown status {status_of(ds)}")
    return _check_series(ds)


def check_final(step: Dataset) -> Refusal | None:
    """A step as merged, about to be COMPLETED or DISCONTINUED: the final-state attributes."""
    found = _missing(step, FINAL_REQUIRED, "")
    if found is not None:
        return found
    return _check_series(step)


def _check_series(ds: Dataset) -> Refusal | None:
    """Each Performed Series Sequence item: its Type 1 attributes and references."""
    series = ds.get("PerformedSeriesSequence") or []
    for n, item in enumerate(series, start=1):
        where = f"series {n} "
        found = _missing(item, SERIES_REQUIRED, where)
        for name in REFERENCES:
            for reference in item.get(name) or []:
                found = found or _missing(reference, REFERENCE_REQUIRED, where)
        if found is not None:
            return found
    return None


def _missing(ds: Dataset, keywords: Iterable[str], where: str) -> Refusal | None:
    """0x0120 for the first absent of ``keywords``, 0x0121 for one present but empty."""
    absent = [k for k in keywords if k not in ds]
    if absent:
        return Refusal(MISSING_ATTRIBUTE, f"{where}missing {_tags(absent)}")
    empty = [k for k in keywords if _empty(ds, k)]
    if empty:
        return Refusal(MISSING_ATTRIBUTE_VALUE, f"{where}no value: {_tags(empty)}")
    return None


def _missing_in_items(ds: Dataset, sequence: str, keywords: Iterable[str]) -> Refusal | None:
    for n, item in enumerate(ds.get(sequence) or [], start=1):
        found = _missing(item, keywords, f"{sequence} item {n} ")
        if found is not None:
            return found
    return None


def _empty(ds: Dataset, keyword: str) -> bool:
    """No value: None, an empty string, an empty list or sequence (a Sequence is no list)."""
    value = ds[keyword].value
    if value is None:
        return True
    try:
        return len(value) == 0
    except TypeError:  # a number
        return False


def _tags(keywords: Iterable[str]) -> str:
    return " ".join(f"{Tag(tag_for_keyword(k) or 0)} {k}" for k in keywords)


def status_of(ds: Dataset) -> str:
    """The Performed Procedure Step Status, without its padding ("" if absent)."""
    return str(ds.get("PerformedProcedureStepStatus", "") or "").strip()


def study_uids(ds: Dataset) -> tuple[str, ...]:
    """Scheduled Step Attribute Sequence > Study Instance UID, each once, in order."""
    found = (
        str(i.get("StudyInstanceUID", "") or "")
        for i in _items(ds, "ScheduledStepAttributesSequence")
    )
    return tuple(dict.fromkeys(uid for uid in found if uid))


def instance_uids(ds: Dataset) -> frozenset[str]:
    """Every SOP Instance UID the Performed Series Sequence references (images and
    non-image composite instances)."""
    found: set[str] = set()
    for series in _items(ds, "PerformedSeriesSequence"):
        for name in REFERENCES:
            for reference in _items(series, name):
                uid = str(reference.get("ReferencedSOPInstanceUID", "") or "")
                if uid:
                    found.add(uid)
    return frozenset(found)


def _items(ds: Dataset, keyword: str) -> Iterator[Dataset]:
    yield from ds.get(keyword) or []
