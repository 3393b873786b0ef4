"""De-identification by PS3.15 Annex E, the Basic Application Level Confidentiality
Profile: every attribute of Table E.1-1 gets its action, as the table is shipped by
``dicom-anonymizer`` (Kitware, BSD; its ``dicomfields_2026c``: DICOM 2026c), applied
here with consistent keyed replacements (``agent.outgoing.keyed``) instead of its random
ones, which would break a study apart between two sends.

Actions: X removed; Z emptied; D a dummy value (patient name and ID: a keyed pseudonym);
U a keyed UID; the combined ones take their strongest (X/Z, X/D, X/Z/D: X; Z/D: D;
X/Z/U*: U for UIDs, else X). Private attributes are removed, and group lengths (retired,
wrong once values change). The options a site picks keep some attributes (see
``RETAINED``), or, with retain-longitudinal-modified-dates, move every date of the table
back by a number of days that is the same for every instance of a patient.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable

from dicomanonymizer.dicom_anonymization_databases import (  # type: ignore[import-untyped]
    dicomfields_2026c as table,
)
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from agent.outgoing import keyed

TABLE_VERSION = "DICOM PS3.15 2026c Table E.1-1 (dicom-anonymizer 2.1.0)"
_LISTS = {
    "D_TAGS": "D", "Z_TAGS": "Z", "X_TAGS": "X", "U_TAGS": "U", "Z_D_TAGS": "D",
    "X_Z_TAGS": "X", "X_D_TAGS": "X", "X_Z_D_TAGS": "X", "X_Z_U_STAR_TAGS": "X/U",
}


def _actions() -> tuple[dict[int, str], list[tuple[int, int, str]]]:
    """Each tag's action, and the masked ones ((tag, mask, action): repeating groups)."""
    exact: dict[int, str] = {}
    masked: list[tuple[int, int, str]] = []
    for name, action in _LISTS.items():
        for entry in getattr(table, name):
            tag = entry[0] << 16 | entry[1]
            if len(entry) == 4:
                masked.append((tag, entry[2] << 16 | entry[3], action))
            else:
                exact.setdefault(tag, action)
    return exact, masked


ACTIONS, MASKED = _actions()


def _tags(*keywords: str) -> frozenset[int]:
    return frozenset(t for k in keywords if (t := tag_for_keyword(k)) is not None)


RETAINED = {
    "retain-patient-characteristics": _tags(
        "PatientAge", "PatientSex", "PatientSize", "PatientWeight", "EthnicGroup",
        "SmokingStatus", "PregnancyStatus", "PatientSexNeutered", "SpecialNeeds",
        "PatientState", "Allergies", "MedicalAlerts"),
    "retain-device-identity": _tags(
        "DeviceSerialNumber", "StationName", "DeviceUID", "DeviceLabel", "DetectorID",
        "GantryID", "PlateID", "CassetteID", "GeneratorID", "SourceSerialNumber",
        "DeviceDescription", "PerformedStationName", "PerformedStationAETitle",
        "ScheduledStationName", "ScheduledStationAETitle", "PerformedLocation"),
    "retain-institution-identity": _tags(
        "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
        "InstitutionCodeSequence", "InstitutionalDepartmentTypeCodeSequence"),
}
CODES = {  # PS3.16 CID 7050, De-identification Method
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "retain-longitudinal-modified-dates": (
        "113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "retain-patient-characteristics": ("113108", "Retain Patient Characteristics Option"),
    "retain-device-identity": ("113109", "Retain Device Identity Option"),
    "retain-uids": ("113110", "Retain UIDs Option"),
    "retain-institution-identity": ("113112", "Retain Institution Identity Option"),
}
PATIENT_NAME, PATIENT_ID = 0x00100010, 0x00100020
META_AE_TITLES = ("SourceApplicationEntityTitle", "SendingApplicationEntityTitle",
                  "ReceivingApplicationEntityTitle", "SourcePresentationAddress",
                  "SendingPresentationAddress", "ReceivingPresentationAddress")
DATES = ("DA", "DT", "TM")
DUMMY: dict[str, object] = {
    "DA": "19000101", "TM": "000000", "DT": "19000101000000", "AS": "000Y",
    "PN": "ANONYMOUS", "LO": "ANONYMOUS", "SH": "ANONYMOUS", "CS": "ANONYMOUS",
    "LT": "ANONYMOUS", "ST": "ANONYMOUS", "UT": "ANONYMOUS", "UC": "ANONYMOUS",
    "AE": "ANONYMOUS", "DS": "0", "IS": "0", "US": 0, "SS": 0, "UL": 0, "SL": 0,
    "FL": 0.0, "FD": 0.0,
}
# SOP classes whose pixels commonly carry identity: secondary capture, ultrasound
BURNED_IN_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture",
    "1.2.840.10008.5.1.4.1.1.7.1": "Multi-frame Single Bit Secondary Capture",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture",
    "1.2.840.10008.5.1.4.1.1.6.1": "Ultrasound Image",
    "1.2.840.10008.5.1.4.1.1.6.2": "Enhanced US Volume",
    "1.2.840.10008.5.1.4.1.1.3.1": "Ultrasound Multi-frame Image",
    "1.2.840.10008.5.1.4.1.1.6": "Ultrasound Image (retired)",
    "1.2.840.10008.5.1.4.1.1.3": "Ultrasound Multi-frame Image (retired)",
}


def action_of(tag: int) -> str | None:
    """The table's action for ``tag`` (X, Z, D, U or X/U), None if it has none."""
    found = ACTIONS.get(tag)
    if found is not None:
        return found
    for masked, mask, action in MASKED:
        if tag & mask == masked:
            return action
    return None


def burned_in(ds: Dataset) -> str | None:
    """Why the pixels may show who the patient is, or None."""
    if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
        return "Burned In Annotation is YES"
    name = BURNED_IN_CLASSES.get(str(ds.get("SOPClassUID", "")))
    return f"{name} instances often carry burned-in annotation" if name else None


class Deidentifier:
    """Applies the profile and options to one header, in place."""

    def __init__(self, key: bytes, options: Iterable[str]) -> None:
        self.key = key
        self.options = frozenset(options)
        self.kept = frozenset().union(*(RETAINED.get(o, frozenset()) for o in self.options))
        self.days = 0
        self.patient = ""

    def apply(self, ds: Dataset) -> None:
        """De-identify ``ds`` (and its file meta's instance UID) and say how it was done."""
        self.patient = str(ds.get("PatientID", "") or ds.get("PatientName", ""))
        self.days = keyed.shift_days(self.key, self.patient)
        self._walk(ds)
        self._declare(ds)
        meta = getattr(ds, "file_meta", None)
        if meta is not None and "SOPInstanceUID" in ds:
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if meta is not None and "retain-device-identity" not in self.options:
            for keyword in META_AE_TITLES:  # a STOW-RS body carries the file meta too
                if keyword in meta:
                    del meta[keyword]

    def _walk(self, ds: Dataset) -> None:
        """Each element by its tag; decoded only when it is acted on or is a sequence to
        walk into (what is left undecoded is copied as stored: agent.outgoing.splice)."""
        for tag in [int(t) for t in ds.keys()]:  # noqa: SIM118 (iterating decodes)
            if tag >> 16 & 1 or (tag & 0xFFFF) == 0:  # private, or a group length
                del ds[tag]
                continue
            action = action_of(tag)
            if action is None or tag in self.kept:
                if _sequence(ds.get_item(tag)):
                    for item in ds[tag].value or ():
                        self._walk(item)
                continue
            self._act(ds, ds[tag], action)

    def _act(self, ds: Dataset, elem: DataElement, action: str) -> None:
        tag = int(elem.tag)
        if elem.VR in DATES and "retain-longitudinal-modified-dates" in self.options:
            if elem.VR != "TM":
                elem.value = _each(elem.value, self._shift)
            return
        if action == "X/U":
            action = "U" if elem.VR == "UI" else "X"
        if action == "U" and "retain-uids" in self.options:
            return
        if action == "X":
            del ds[tag]
        elif action == "U":
            elem.value = _each(elem.value, lambda v: keyed.uid(self.key, v))
        elif tag in (PATIENT_NAME, PATIENT_ID):
            code = keyed.pseudonym(self.key, self.patient)
            elem.value = f"ANON^{code}" if tag == PATIENT_NAME else f"ANON{code}"
        elif action == "Z" or elem.VR not in DUMMY:
            elem.value = Sequence() if elem.VR == "SQ" else None
        else:
            elem.value = DUMMY[elem.VR]

    def _shift(self, value: str) -> str:
        """A DA or DT moved back by the patient's days (the time of day kept)."""
        if not value.strip():
            return value
        day = dt.datetime.strptime(value[:8], "%Y%m%d") - dt.timedelta(days=self.days)
        return day.strftime("%Y%m%d") + value[8:]

    def _declare(self, ds: Dataset) -> None:
        """Patient Identity Removed, and the method in words and codes (PS3.15 E.1.1)."""
        chosen = ["basic", *sorted(o for o in self.options if o in CODES)]
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = [CODES[option][1] for option in chosen]  # LO, 1-n
        codes = Sequence()
        for option in chosen:
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator = CODES[option][0], "DCM"
            item.CodeMeaning = CODES[option][1]
            codes.append(item)
        ds.DeidentificationMethodCodeSequence = codes
        dates = "retain-longitudinal-modified-dates" in self.options
        ds.LongitudinalTemporalInformationModified = "MODIFIED" if dates else "REMOVED"


def _sequence(elem: DataElement | RawDataElement) -> bool:
    """Whether an element, decoded or not, is a sequence."""
    if elem.VR is not None:
        return bool(elem.VR == "SQ")
    try:
        return bool(dictionary_VR(elem.tag) == "SQ")
    except KeyError:
        return False


def _each(value: object, change: Callable[[str], str]) -> object:
    """``change`` applied to a value or to each of its values."""
    if value is None or value == "":
        return value
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [change(str(v)) for v in value]  # type: ignore[attr-defined]
    return change(str(value))
