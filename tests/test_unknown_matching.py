"""Unknown Required Keys match, whether held empty or absent (PS3.4 C.2.2.1.2).

An entity whose Required Key is zero length matches any value of that key. An attribute
the instance did not carry is unknown exactly as a zero-length one is (the index stores
'' for the one and NULL for the other): both match, at every level, in every model, for
every Required Key and every kind of value (single, wildcard, list, range, combined
date-time). Optional keys get no such rule: their empty and absent values match only
universally. The archive is built in the index directly and queried with the archive's
own ``find``, so every (model, level, key, value) case costs a millisecond.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest
from pydicom import uid
from pydicom.dataset import Dataset

from agent.archive.index import Index, InstanceRecord, add_instance
from agent.archive.keys import KEYS, extract
from agent.archive.query import find
from agent.dicom.models import Level, Model

# wildcards and lower case in CS query values are valid queries, not invalid CS values
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR")

Values = dict[str, str | None]  # None: the attribute is absent

# -- The archive -----------------------------------------------------------------------
# Every level has a "known" entity, an "empty" one (its keys present, zero length) and an
# "absent" one (its keys not there at all); the known ones carry the levels below.
PATIENTS: dict[str, Values] = {
    "known": {"PatientID": "PK", "PatientName": "DOE^JOHN", "PatientBirthDate": "19800115"},
    "empty": {"PatientID": "PE", "PatientName": "", "PatientBirthDate": ""},
    "absent": {"PatientID": "PA", "PatientName": None, "PatientBirthDate": None},
    # Patient ID is Required in Study Root: empty and absent, told apart by their issuer
    "id-empty": {"PatientID": "", "IssuerOfPatientID": "E", "PatientName": "DOE^JOHN"},
    "id-absent": {"PatientID": None, "IssuerOfPatientID": "A", "PatientName": "DOE^JOHN"},
}
FULL_STUDY: Values = {"StudyDate": "20240115", "StudyTime": "101500",
                      "AccessionNumber": "ACC1", "StudyID": "S1", "StudyDescription": "CT HEAD"}
STUDIES: dict[str, Values] = {  # the known patient's studies
    "known": FULL_STUDY,
    "empty": dict.fromkeys(FULL_STUDY, ""),
    "absent": dict.fromkeys(FULL_STUDY),
    "time-empty": {**FULL_STUDY, "StudyTime": ""},
    "time-absent": {**FULL_STUDY, "StudyTime": None},
}
FULL_SERIES: Values = {"Modality": "CT", "SeriesNumber": "1", "SeriesDate": "20240115"}
SERIES: dict[str, Values] = {  # the known study's series
    "known": FULL_SERIES, "empty": dict.fromkeys(FULL_SERIES, ""),
    "absent": dict.fromkeys(FULL_SERIES),
}
FULL_IMAGE: Values = {"InstanceNumber": "1", "ContentDate": "20240115"}
IMAGES: dict[str, Values] = {  # the known series' instances
    "known": FULL_IMAGE, "empty": dict.fromkeys(FULL_IMAGE, ""),
    "absent": dict.fromkeys(FULL_IMAGE),
}
ENTITIES = {Level.PATIENT: PATIENTS, Level.STUDY: STUDIES, Level.SERIES: SERIES,
            Level.IMAGE: IMAGES}
UNIQUE = {Level.PATIENT: "PatientID", Level.STUDY: "StudyInstanceUID",
          Level.SERIES: "SeriesInstanceUID", Level.IMAGE: "SOPInstanceUID"}


def _uid(*parts: str) -> str:
    return uid.generate_uid(entropy_srcs=["test_unknown_matching", *parts])


def _dataset(patient: str, study: str, series: str, image: str) -> Dataset:
    """One instance: the labelled entity at each level, full values where 'known'."""
    ds = Dataset()
    ds.SOPClassUID = uid.CTImageStorage
    ds.StudyInstanceUID = _uid(patient, study)
    ds.SeriesInstanceUID = _uid(patient, study, series)
    ds.SOPInstanceUID = _uid(patient, study, series, image)
    for values in (PATIENTS[patient], STUDIES[study], SERIES[series], IMAGES[image]):
        for keyword, value in values.items():
            if value is not None:
                setattr(ds, keyword, value)
    return ds


def _instances() -> Iterator[Dataset]:
    for patient in PATIENTS:
        yield _dataset(patient, "known", "known", "known")
    for study in STUDIES:
        if study != "known":
            yield _dataset("known", study, "known", "known")
    for series in SERIES:
        if series != "known":
            yield _dataset("known", "known", series, "known")
    for image in IMAGES:
        if image != "known":
            yield _dataset("known", "known", "known", image)


def _label(level: Level, answer: Dataset) -> str:
    """The label of the entity an answer names; a study of another patient than the
    known one is "p-" and its patient's label."""
    value = str(answer.get(UNIQUE[level]) or "")
    for patient, own in PATIENTS.items():
        if level is Level.PATIENT:
            issuer = str(answer.get("IssuerOfPatientID") or "")
            if (value, issuer) == (own["PatientID"] or "", own.get("IssuerOfPatientID") or ""):
                return patient
            continue
        paths = {Level.STUDY: [(patient, s) for s in STUDIES],
                 Level.SERIES: [(patient, "known", s) for s in SERIES],
                 Level.IMAGE: [(patient, "known", "known", i) for i in IMAGES]}[level]
        for parts in paths:
            if value == _uid(*parts):
                return parts[-1] if patient == "known" else f"p-{patient}"
    raise AssertionError(f"an answer names no entity of the archive: {value!r}")


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sqlite3.Connection]:
    path = tmp_path_factory.mktemp("unknown") / "index.sqlite"
    with Index(path) as built:
        with built.transaction() as conn:
            for number, ds in enumerate(_instances()):
                add_instance(conn, InstanceRecord(
                    levels={level: extract(ds, level) for level in KEYS},
                    path=f"{number}.dcm", size=1, transfer_syntax=uid.ExplicitVRLittleEndian,
                    calling_ae="CT", received_at="2026-01-01T00:00:00+00:00",
                    charset="ISO_IR 192"))
        with built.reading() as conn:
            yield conn


def labels(conn: sqlite3.Connection, model: Model, level: Level, keys: dict[str, str],
           *, combined: bool = False) -> set[str]:
    """Labels of the entities a C-FIND identifier finds, under the known entities above
    (in Study Root, which has no patient above, the known patient's studies by UID list)."""
    query = Dataset()
    query.QueryRetrieveLevel = level.value
    for above in model.levels[: model.levels.index(level)]:
        setattr(query, UNIQUE[above], _above(above))
    setattr(query, UNIQUE[level], "")
    if level is Level.PATIENT:
        query.IssuerOfPatientID = ""
    if (model, level) == (Model.STUDY_ROOT, Level.STUDY):
        query.StudyInstanceUID = "\\".join(_uid("known", s) for s in STUDIES)
    for keyword, value in keys.items():
        setattr(query, keyword, value)
    found = [_label(level, a) for a in find(conn, model, query, combined_datetime=combined)]
    assert len(found) == len(set(found)), f"an entity answered twice: {found}"
    return set(found)


def _above(level: Level) -> str:
    return {Level.PATIENT: "PK", Level.STUDY: _uid("known", "known"),
            Level.SERIES: _uid("known", "known", "known")}[level]


def unknown(level: Level, keyword: str) -> set[str]:
    """The labels of the level's entities that hold ``keyword`` empty or not at all."""
    return {label for label, values in ENTITIES[level].items()
            if keyword in values and values[keyword] in ("", None)}


# -- Required Keys: the unknown match whatever is asked --------------------------------
# (level, key, values none of the archive's known entities holds): single, wildcard,
# list, case, and ranges closed, open at either end, and one day long.
MISSES = [
    (Level.PATIENT, "PatientName", ["NOBODY", "NOBODY*", "?OBODY", "doe^jane"]),
    (Level.STUDY, "StudyDate", ["20300101", "20300101-20301231", "20300101-", "-19000101",
                                "20300101-20300101"]),
    (Level.STUDY, "StudyTime", ["2300", "230000-235959", "230000-", "-010000", "23"]),
    (Level.STUDY, "AccessionNumber", ["ZZZ", "ZZ*", "acc1", "AC?"]),
    (Level.STUDY, "StudyID", ["ZZZ", "Z*", "s1"]),
    (Level.SERIES, "Modality", ["XA", "X*", "ct", "XA\\NM"]),
    (Level.SERIES, "SeriesNumber", ["99", "98\\99"]),
    (Level.IMAGE, "InstanceNumber", ["99", "98\\99"]),
]
MODELS_AT = {Level.PATIENT: [Model.PATIENT_ROOT, Model.PATIENT_STUDY_ONLY],
             Level.STUDY: [Model.PATIENT_ROOT, Model.STUDY_ROOT, Model.PATIENT_STUDY_ONLY],
             Level.SERIES: [Model.PATIENT_ROOT, Model.STUDY_ROOT],
             Level.IMAGE: [Model.PATIENT_ROOT, Model.STUDY_ROOT]}
CASES = [pytest.param(model, level, keyword, value,
                      id=f"{model.value}-{level.value}-{keyword}={value}")
         for level, keyword, values in MISSES for model in MODELS_AT[level] for value in values]


@pytest.mark.parametrize(("model", "level", "keyword", "value"), CASES)
def test_an_unknown_required_key_matches_any_value(
        index: sqlite3.Connection, model: Model, level: Level, keyword: str,
        value: str) -> None:
    """Only the empty and the absent entity match a value nobody holds."""
    assert labels(index, model, level, {keyword: value}) == unknown(level, keyword)


@pytest.mark.parametrize(("model", "level", "keyword"), [
    pytest.param(m, lv, k, id=f"{m.value}-{lv.value}-{k}")
    for lv, k, _ in MISSES for m in MODELS_AT[lv]])
def test_an_unknown_required_key_matches_beside_the_known_value(
        index: sqlite3.Connection, model: Model, level: Level, keyword: str) -> None:
    """The known value finds the entities holding it, and the empty and absent ones."""
    value = str(ENTITIES[level]["known"][keyword])
    holding = {label for label, values in ENTITIES[level].items()
               if values.get(keyword) == value}
    assert labels(index, model, level, {keyword: value}) == holding | unknown(level, keyword)


@pytest.mark.parametrize(("keyword", "value", "expected"), [
    ("PatientName", "NOBODY*", {"p-empty", "p-absent"}),
    ("PatientName", "doe^jane", {"p-empty", "p-absent"}),
    ("PatientID", "NOBODY", {"p-id-empty", "p-id-absent"}),
    ("PatientID", "N*", {"p-id-empty", "p-id-absent"}),
    ("PatientID", "pk", {"p-id-empty", "p-id-absent"}),
])
def test_study_root_patient_keys_are_required(
        index: sqlite3.Connection, keyword: str, value: str, expected: set[str]) -> None:
    """In Study Root a study carries its patient's Name and ID as Required Keys."""
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = "\\".join(_uid(p, "known") for p in PATIENTS)  # a UID list
    setattr(query, keyword, value)
    found = {_label(Level.STUDY, a) for a in find(index, Model.STUDY_ROOT, query)}
    assert found == expected


# -- Combined date-time matching: an unknown date, or an unknown time on a known day ----
@pytest.mark.parametrize(("keys", "expected"), [
    # the day is outside: only the unknown dates match
    ({"StudyDate": "20300101-20301231", "StudyTime": "0800-1200"}, {"empty", "absent"}),
    # the day meets the range: an unknown time is the whole day, empty or absent alike
    ({"StudyDate": "20240115", "StudyTime": "2300-2359"},
     {"empty", "absent", "time-empty", "time-absent"}),
    ({"StudyDate": "20240101-20240131", "StudyTime": "1000-1100"}, set(STUDIES)),
])
def test_combined_date_time_treats_empty_and_absent_alike(
        index: sqlite3.Connection, keys: dict[str, str], expected: set[str]) -> None:
    for model in MODELS_AT[Level.STUDY]:
        assert labels(index, model, Level.STUDY, keys, combined=True) == expected, model


def test_separate_date_and_time_treat_an_absent_time_as_an_empty_one(
        index: sqlite3.Connection) -> None:
    keys = {"StudyDate": "20240115", "StudyTime": "2300-2359"}
    assert labels(index, Model.STUDY_ROOT, Level.STUDY, keys) \
        == {"empty", "absent", "time-empty", "time-absent"}


# -- Optional keys: no rule; the empty and the absent match only universally -----------
@pytest.mark.parametrize(("level", "keyword", "miss"), [
    (Level.PATIENT, "PatientBirthDate", "-19000101"),
    (Level.STUDY, "StudyDescription", "ZZ*"),
    (Level.SERIES, "SeriesDate", "20300101-"),
    (Level.IMAGE, "ContentDate", "-19000101"),
], ids=lambda v: v.value if isinstance(v, Level) else str(v))
def test_an_unknown_optional_key_matches_only_universally(
        index: sqlite3.Connection, level: Level, keyword: str, miss: str) -> None:
    model = Model.PATIENT_ROOT
    known = str(ENTITIES[level]["known"][keyword])
    holding = {label for label, values in ENTITIES[level].items()
               if values.get(keyword) == known}
    assert labels(index, model, level, {keyword: miss}) == set()
    assert labels(index, model, level, {keyword: known}) == holding
    assert labels(index, model, level, {keyword: ""}) == set(ENTITIES[level])
    assert labels(index, model, level, {keyword: "*"}) == set(ENTITIES[level])


def test_the_index_stores_empty_and_absent_apart(index: sqlite3.Connection) -> None:
    """What the rule must bridge: '' for a zero-length value, NULL for an absent one."""
    rows = dict(index.execute(
        "SELECT StudyInstanceUID, AccessionNumber FROM studies").fetchall())
    assert rows[_uid("known", "empty")] == ""
    assert rows[_uid("known", "absent")] is None

