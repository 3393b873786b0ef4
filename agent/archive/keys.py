"""The attributes the index keeps, by level of the DICOM hierarchy.

One table drives the SQL schema, the extraction from a received header and (later) the
C-FIND key mapping, so adding a key is a one-line change. It holds every Unique and
Required key of the Patient Root, Study Root and Patient/Study Only models (PS3.4 C.6)
plus the optional keys workstations commonly ask for.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from agent.dicom.models import Level

TABLES = {  # the SQL table holding each level
    Level.PATIENT: "patients",
    Level.STUDY: "studies",
    Level.SERIES: "series",
    Level.IMAGE: "instances",
}


@dataclass(frozen=True)
class IndexedKey:
    """One attribute the index keeps as a column of its level's table."""

    keyword: str
    level: Level
    vr: str
    norm_column: str | None  # for Person Names: the case-folded copy used for matching
    tag: int  # looked up by tag: by keyword, each absent key costs a failed attribute lookup


def _keys(level: Level, keywords: Iterable[str]) -> tuple[IndexedKey, ...]:
    keys = []
    for keyword in keywords:
        vr = str(dictionary_VR(keyword))
        norm = f"{keyword}_norm" if vr == "PN" else None
        keys.append(IndexedKey(keyword, level, vr, norm, int(tag_for_keyword(keyword) or 0)))
    return tuple(keys)


# VRs whose leading spaces are padding too (PS3.5 6.2): stored and matched without them
LEADING_SPACES_PAD = frozenset({"AE", "CS", "DS", "IS", "LO", "SH"})

UNIQUE_KEYS: Mapping[Level, str] = {
    Level.PATIENT: "PatientID",
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.IMAGE: "SOPInstanceUID",
}

# Required Keys (R) of PS3.4 C.6.1.1 and C.6.2.1, by the level they stand at; the Unique
# Keys are listed above. Study Root has no patient level: its studies carry the patient's
# name and ID as Required Keys.
REQUIRED_KEYS: Mapping[Level, frozenset[str]] = {
    Level.PATIENT: frozenset({"PatientName"}),
    Level.STUDY: frozenset({"StudyDate", "StudyTime", "AccessionNumber", "StudyID"}),
    Level.SERIES: frozenset({"Modality", "SeriesNumber"}),
    Level.IMAGE: frozenset({"InstanceNumber"}),
}
STUDY_ROOT_PATIENT_KEYS = frozenset({"PatientName", "PatientID"})

KEYS: Mapping[Level, tuple[IndexedKey, ...]] = {
    Level.PATIENT: _keys(
        Level.PATIENT,
        (
            "PatientID",
            "IssuerOfPatientID",
            "PatientName",
            "PatientBirthDate",
            "PatientBirthTime",
            "PatientSex",
            "OtherPatientIDs",
            "OtherPatientNames",
            "EthnicGroup",
            "PatientComments",
        ),
    ),
    Level.STUDY: _keys(
        Level.STUDY,
        (
            "StudyInstanceUID",
            "StudyDate",
            "StudyTime",
            "AccessionNumber",
            "StudyID",
            "ReferringPhysicianName",
            "StudyDescription",
            "NameOfPhysiciansReadingStudy",
            "PatientAge",
            "PatientSize",
            "PatientWeight",
            "ProcedureCodeSequence",
        ),
    ),
    Level.SERIES: _keys(
        Level.SERIES,
        (
            "SeriesInstanceUID",
            "Modality",
            "SeriesNumber",
            "SeriesDescription",
            "BodyPartExamined",
            "Laterality",
            "SeriesDate",
            "SeriesTime",
            "ProtocolName",
            "PerformedProcedureStepStartDate",
            "PerformedProcedureStepStartTime",
            "PerformingPhysicianName",
            "OperatorsName",
            "StationName",
            "InstitutionName",
            "RequestAttributesSequence",
        ),
    ),
    Level.IMAGE: _keys(
        Level.IMAGE,
        (
            "SOPInstanceUID",
            "SOPClassUID",
            "InstanceNumber",
            "ContentDate",
            "ContentTime",
            "AcquisitionDate",
            "AcquisitionTime",
            "AcquisitionDateTime",
            "ImageType",
            "NumberOfFrames",
            "Rows",
            "Columns",
        ),
    ),
}


def normalize_pn(value: str | None) -> str | None:
    """Person Name for matching: case-folded, empty trailing components and groups dropped."""
    if value is None:
        return None
    groups = [group.rstrip("^ ") for group in value.split("=")]
    while groups and not groups[-1]:
        groups.pop()
    return "=".join(groups).upper()


def as_text(value: Any) -> str:
    """A decoded element value as the text the index stores (multi-values joined by '\\')."""
    if value is None or isinstance(value, Dataset):  # a sequence's items are never text
        return ""
    if isinstance(value, (MultiValue, list, tuple)):
        return "\\".join(as_text(item) for item in value)
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    return str(value)


def sequence_as_json(value: Any) -> str:
    """A sequence as JSON: a list of items, each {keyword: text} of its plain elements."""
    items = []
    for item in value or ():
        items.append(
            {
                element.keyword: as_text(element.value)
                for element in item
                if element.keyword and element.VR != "SQ"
            }
        )
    return json.dumps(items, ensure_ascii=False)


def extract(ds: Dataset, level: Level) -> dict[str, str | None]:
    """Column values of ``level`` from a header: None where the attribute is absent."""
    row: dict[str, str | None] = {}
    for key in KEYS[level]:
        if key.tag not in ds:
            text = None
        elif key.vr == "SQ":
            text = sequence_as_json(ds[key.tag].value)
        else:
            text = as_text(ds[key.tag].value)
            if key.vr in LEADING_SPACES_PAD:
                text = "\\".join(v.lstrip(" ") for v in text.split("\\"))
        row[key.keyword] = text
        if key.norm_column:
            row[key.norm_column] = normalize_pn(text)
    return row
