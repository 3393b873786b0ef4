"""Range matching and the unknown Required Key rule, against present-but-empty and
absent values, through pynetdicom C-FIND against an in-process agent.

PS3.4 C.2.2.1.2: if the SCP holds an entity whose Required Key is zero length, any
matching against that key is a successful match. An attribute the archive does not hold
is unknown exactly as a zero-length one is, so the absent entity matches alike (as
dcm4chee-arc's "match unknown" does); one that matched the empty entity and not the
absent one would give answers that are neither the set with the rule nor the set
without it. The rule covers Required keys only: an empty or absent Optional key does not
match a non-universal value (a range included). Universal matching (an empty query
value) matches everything, the absent and the empty too.

Every patient has one study; every study three series (full, empty, absent); every series
three instances (full, empty, absent): "empty" entities hold the keys under test with
zero length, "absent" ones do not hold them at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dicomgen
import pytest
from pydicom import uid
from pydicom.dataset import Dataset

from agent import config as config_module
from agent.app import Agent
from tests import qr_archive as qa
from tests import scu
from tests.qr_archive import identifier as q
from tests.support import free_port, peer, write_config

# wildcards in CS query values are valid queries, not invalid CS values
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR")

KINDS = ("full", "empty", "absent")

# the keys each level's "empty" entity holds with zero length and its "absent" one lacks
PATIENT_KEYS = ("PatientName", "PatientBirthDate", "PatientBirthTime")
STUDY_KEYS = ("StudyDate", "StudyTime", "AccessionNumber", "StudyID")
SERIES_KEYS = ("Modality", "SeriesNumber", "SeriesDate", "SeriesTime")
IMAGE_KEYS = ("InstanceNumber", "ContentDate", "ContentTime", "AcquisitionDateTime")

# the values of the two patients whose keys are all filled in
FULL = {
    "EARLY": {"PatientName": "DOE^JOHN", "PatientBirthDate": "19800115",
              "PatientBirthTime": "101500", "StudyDate": "20240115", "StudyTime": "101500",
              "AccessionNumber": "ACC1", "StudyID": "S1", "Modality": "CT",
              "SeriesNumber": "1", "SeriesDate": "20240115", "SeriesTime": "101500",
              "InstanceNumber": "1", "ContentDate": "20240115", "ContentTime": "101500",
              "AcquisitionDateTime": "20240115101500"},
    "LATE": {"PatientName": "DOE^JANE", "PatientBirthDate": "19990601",
             "PatientBirthTime": "200000", "StudyDate": "20250601", "StudyTime": "200000",
             "AccessionNumber": "ACC2", "StudyID": "S2", "Modality": "MR",
             "SeriesNumber": "2", "SeriesDate": "20250601", "SeriesTime": "200000",
             "InstanceNumber": "2", "ContentDate": "20250601", "ContentTime": "200000",
             "AcquisitionDateTime": "20250601200000"},
}
PATIENTS = ("EARLY", "LATE", "EMPTY", "ABSENT")


def _uid(*parts: str) -> str:
    return uid.generate_uid(entropy_srcs=["test_range_matching", *parts])


def _apply(ds: Dataset, keys: tuple[str, ...], kind: str, values: dict[str, str]) -> None:
    """Fill, empty or delete ``keys``: kind is 'full', 'empty' or 'absent'."""
    for keyword in keys:
        if kind == "absent":
            if keyword in ds:
                delattr(ds, keyword)
        elif kind == "empty":
            setattr(ds, keyword, "")
        else:
            setattr(ds, keyword, values[keyword])


@dataclass
class Served:
    port: int
    labels: dict[str, str]  # UID of any entity -> its label
    study: dict[str, str]  # patient -> study UID
    series: dict[tuple[str, str], str]  # (patient, kind) -> series UID


def _datasets() -> Iterator[tuple[str, str, str, Dataset]]:
    """(patient, series kind, instance kind, data set) for the whole archive."""
    for patient in PATIENTS:
        own = "full" if patient in FULL else patient.lower()
        values = FULL.get(patient, FULL["EARLY"])
        study = dicomgen.Study(patient_id=f"R-{patient}", study_uid=_uid(patient),
                               charset="ISO_IR 192")
        for series_kind in KINDS:
            series_uid = _uid(patient, series_kind)
            for instance_kind in KINDS:
                [ds] = dicomgen.series(1, study=study, series_uid=series_uid, size=8)
                ds.SOPInstanceUID = _uid(patient, series_kind, instance_kind)
                ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
                _apply(ds, PATIENT_KEYS + STUDY_KEYS, own, values)
                _apply(ds, SERIES_KEYS, "full" if own == "full" else series_kind, values)
                _apply(ds, IMAGE_KEYS, "full" if own == "full" else instance_kind, values)
                if own == "full":  # the full patients' empty and absent children
                    _apply(ds, SERIES_KEYS, series_kind, values)
                    if series_kind == "full":
                        _apply(ds, IMAGE_KEYS, instance_kind, values)
                yield patient, series_kind, instance_kind, ds


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("ranges")
    config = config_module.load_file(write_config(
        root / "agent.toml",
        {"ae_title": "EDGE", "port": free_port(), "bind": "127.0.0.1",
         "data_dir": str(root / "data"), "min_free_mb": 0},
        {"CT": peer("MODALITY", allow=("store",)), "WS": peer("WS", allow=("find",))}))
    files, labels, studies, series = [], {}, {}, {}
    for patient, series_kind, instance_kind, ds in _datasets():
        path = root / "src" / f"{ds.SOPInstanceUID}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
        studies[patient] = str(ds.StudyInstanceUID)
        series[(patient, series_kind)] = str(ds.SeriesInstanceUID)
        labels[str(ds.StudyInstanceUID)] = patient
        labels[str(ds.SeriesInstanceUID)] = series_kind
        labels[str(ds.SOPInstanceUID)] = instance_kind
        labels[f"R-{patient}"] = patient
    with Agent(config):
        assert scu.store(config.agent.port, files) == [0] * len(files)
        yield Served(config.agent.port, labels, studies, series)


def _ids(value: object) -> str | None:
    """Test ids: the query's keys, as findscu would take them."""
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return "+".join(sorted(value)) or "none" if isinstance(value, set) else None


LEVEL_UID = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID",
             "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}


def found(served: Served, model: str, level: str, keys: dict[str, str],
          above: dict[str, str] | None = None) -> set[str]:
    """Labels of the entities a C-FIND answers (asserting it ends with Success)."""
    query = q(level, **(above or {}), **keys)
    unique = LEVEL_UID[level]
    if unique not in query:
        setattr(query, unique, "")
    answers, status = qa.find(served.port, query, model=model)
    assert status == 0, f"C-FIND ended with 0x{status:04X}"
    labels = [served.labels[str(getattr(a, unique))] for a in answers]
    assert len(labels) == len(set(labels)), f"an entity answered twice: {labels}"
    return set(labels)


# -- STUDY level, Study Root: StudyDate, StudyTime, AccessionNumber, StudyID, PatientName
# are Required keys (PS3.4 C.6.2.1.2), so the EMPTY study matches every value of them.
ALL_STUDIES = {"EARLY", "LATE", "EMPTY", "ABSENT"}


@pytest.mark.parametrize(("keys", "expected"), [
    ({"StudyDate": "-20240131"}, {"EARLY", "EMPTY", "ABSENT"}),  # open start
    ({"StudyDate": "20240101-"}, {"EARLY", "LATE", "EMPTY", "ABSENT"}),  # open end
    ({"StudyDate": "20240101-20240131"}, {"EARLY", "EMPTY", "ABSENT"}),  # closed
    ({"StudyDate": "20300101-20301231"}, {"EMPTY", "ABSENT"}),  # nothing held, but the unknown
    ({"StudyDate": "20240115"}, {"EARLY", "EMPTY", "ABSENT"}),  # single value
    ({"StudyTime": "-120000"}, {"EARLY", "EMPTY", "ABSENT"}),
    ({"StudyTime": "120000-"}, {"LATE", "EMPTY", "ABSENT"}),
    ({"StudyTime": "100000-110000"}, {"EARLY", "EMPTY", "ABSENT"}),
    ({"StudyTime": "101500"}, {"EARLY", "EMPTY", "ABSENT"}),
    ({"StudyDate": "20240101-", "StudyTime": "-120000"}, {"EARLY", "EMPTY", "ABSENT"}),
    ({"AccessionNumber": "ACC*"}, {"EARLY", "LATE", "EMPTY", "ABSENT"}),
    ({"AccessionNumber": "ACC1"}, {"EARLY", "EMPTY", "ABSENT"}),
    ({"StudyID": "S2"}, {"LATE", "EMPTY", "ABSENT"}),
    ({"StudyID": "S?"}, {"EARLY", "LATE", "EMPTY", "ABSENT"}),
    ({"PatientName": "DOE*"}, {"EARLY", "LATE", "EMPTY", "ABSENT"}),
    ({"PatientName": "doe^jane"}, {"LATE", "EMPTY", "ABSENT"}),
    # universal matching: everything, the empty and the absent too
    ({"StudyDate": ""}, ALL_STUDIES),
    ({"StudyTime": ""}, ALL_STUDIES),
    ({"AccessionNumber": ""}, ALL_STUDIES),
    ({"AccessionNumber": "*"}, ALL_STUDIES),
    ({"PatientName": ""}, ALL_STUDIES),
], ids=_ids)
def test_study_root_study_level(served: Served, keys: dict[str, str], expected: set[str]) -> None:
    assert found(served, qa.STUDY_ROOT_FIND, "STUDY", keys) == expected


@pytest.mark.parametrize(("keys", "expected"), [
    ({"StudyDate": "20300101-20301231", "StudyTime": "0800-1200"}, {"EMPTY", "ABSENT"}),
    ({"StudyDate": "20240101-20240131", "StudyTime": "1000-1100"}, {"EARLY", "EMPTY", "ABSENT"}),
], ids=_ids)
def test_combined_date_time_matching(served: Served, keys: dict[str, str],
                                     expected: set[str]) -> None:
    """Combined date-time matching negotiated: the unknown dates match, empty or absent."""
    answers, status = qa.find(served.port, q("STUDY", StudyInstanceUID="", **keys),
                              combined=True)
    assert status == 0
    assert {served.labels[str(a.StudyInstanceUID)] for a in answers} == expected


@pytest.mark.parametrize("model", [qa.PATIENT_ROOT_FIND, qa.PATIENT_STUDY_FIND],
                         ids=["PatientRoot", "PatientStudyOnly"])
@pytest.mark.parametrize("keys", [
    {"AccessionNumber": "ACC1"},
    {"StudyID": "S1"},
    {"StudyDate": "20240101-20240131"},
    {"StudyDate": "20250101-"},
    {"StudyDate": "-20240131"},
    {"StudyTime": "120000-"},
], ids=_ids)
def test_study_level_under_a_patient(served: Served, model: str, keys: dict[str, str]) -> None:
    """Under its patient, the empty study matches and so does the absent one."""
    for patient in ("EMPTY", "ABSENT"):
        got = found(served, model, "STUDY", keys, {"PatientID": f"R-{patient}"})
        assert got == {patient}, patient


# -- PATIENT level: PatientName is Required; PatientBirthDate and PatientBirthTime are
# Optional (PS3.4 C.6.1.1.2), so their empty values match no range.
@pytest.mark.parametrize("model", [qa.PATIENT_ROOT_FIND, qa.PATIENT_STUDY_FIND],
                         ids=["PatientRoot", "PatientStudyOnly"])
@pytest.mark.parametrize(("keys", "expected"), [
    ({"PatientName": "DOE*"}, {"EARLY", "LATE", "EMPTY", "ABSENT"}),
    ({"PatientName": "DOE^JOHN"}, {"EARLY", "EMPTY", "ABSENT"}),
    ({"PatientName": "*JANE"}, {"LATE", "EMPTY", "ABSENT"}),
    ({"PatientBirthDate": "-19851231"}, {"EARLY"}),  # Optional: open start
    ({"PatientBirthDate": "19850101-"}, {"LATE"}),  # Optional: open end
    ({"PatientBirthDate": "19800101-19801231"}, {"EARLY"}),  # Optional: closed
    ({"PatientBirthDate": "19800115"}, {"EARLY"}),
    ({"PatientBirthTime": "-120000"}, {"EARLY"}),
    ({"PatientBirthTime": "120000-"}, {"LATE"}),
    ({"PatientBirthTime": "100000-110000"}, {"EARLY"}),
    ({"PatientBirthDate": ""}, ALL_STUDIES),
    ({"PatientName": ""}, ALL_STUDIES),
], ids=_ids)
def test_patient_level(served: Served, model: str, keys: dict[str, str],
                       expected: set[str]) -> None:
    assert found(served, model, "PATIENT", keys) == expected


def test_optional_birth_date_under_study_root(served: Served) -> None:
    """In Study Root the patient's keys are study-level keys; Birth Date is still Optional."""
    assert found(served, qa.STUDY_ROOT_FIND, "STUDY", {"PatientBirthDate": "-19851231"}) \
        == {"EARLY"}
    assert found(served, qa.STUDY_ROOT_FIND, "STUDY", {"PatientBirthDate": "19850101-"}) \
        == {"LATE"}


# -- SERIES level: Modality and SeriesNumber are Required (C.6.1.1.4); SeriesDate and
# SeriesTime Optional.
@pytest.mark.parametrize("model", [qa.STUDY_ROOT_FIND, qa.PATIENT_ROOT_FIND],
                         ids=["StudyRoot", "PatientRoot"])
@pytest.mark.parametrize(("keys", "expected"), [
    ({"Modality": "CT"}, {"full", "empty", "absent"}),
    ({"Modality": "C?"}, {"full", "empty", "absent"}),
    ({"Modality": "MR"}, {"empty", "absent"}),
    ({"Modality": "CT\\MR"}, {"full", "empty", "absent"}),  # a list
    ({"SeriesNumber": "1"}, {"full", "empty", "absent"}),
    ({"SeriesNumber": "99"}, {"empty", "absent"}),
    ({"Modality": "CT", "SeriesNumber": "1"}, {"full", "empty", "absent"}),
    ({"SeriesDate": "-20241231"}, {"full"}),  # Optional: open start
    ({"SeriesDate": "20240101-"}, {"full"}),  # Optional: open end
    ({"SeriesDate": "20240101-20240131"}, {"full"}),
    ({"SeriesTime": "-120000"}, {"full"}),
    ({"SeriesTime": "100000-"}, {"full"}),
    ({"Modality": ""}, set(KINDS)),
    ({"SeriesDate": ""}, set(KINDS)),
], ids=_ids)
def test_series_level(served: Served, model: str, keys: dict[str, str],
                      expected: set[str]) -> None:
    above = {"StudyInstanceUID": served.study["EARLY"]}
    if model == qa.PATIENT_ROOT_FIND:
        above = {"PatientID": "R-EARLY", **above}
    assert found(served, model, "SERIES", keys, above) == expected


# -- IMAGE level: InstanceNumber is Required (C.6.1.1.5); ContentDate, ContentTime and
# AcquisitionDateTime Optional.
@pytest.mark.parametrize("model", [qa.STUDY_ROOT_FIND, qa.PATIENT_ROOT_FIND],
                         ids=["StudyRoot", "PatientRoot"])
@pytest.mark.parametrize(("keys", "expected"), [
    ({"InstanceNumber": "1"}, {"full", "empty", "absent"}),
    ({"InstanceNumber": "42"}, {"empty", "absent"}),
    ({"ContentDate": "-20241231"}, {"full"}),
    ({"ContentDate": "20240101-"}, {"full"}),
    ({"ContentDate": "20240101-20240131"}, {"full"}),
    ({"ContentTime": "-120000"}, {"full"}),
    ({"ContentTime": "100000-110000"}, {"full"}),
    ({"AcquisitionDateTime": "-20241231235959"}, {"full"}),  # DT, open start
    ({"AcquisitionDateTime": "20240101-"}, {"full"}),  # DT, open end
    ({"AcquisitionDateTime": "20240115100000-20240115110000"}, {"full"}),  # DT, closed
    ({"AcquisitionDateTime": "20250101-20251231"}, set()),
    ({"InstanceNumber": ""}, set(KINDS)),
    ({"AcquisitionDateTime": ""}, set(KINDS)),
], ids=_ids)
def test_image_level(served: Served, model: str, keys: dict[str, str],
                     expected: set[str]) -> None:
    above = {"StudyInstanceUID": served.study["EARLY"],
             "SeriesInstanceUID": served.series[("EARLY", "full")]}
    if model == qa.PATIENT_ROOT_FIND:
        above = {"PatientID": "R-EARLY", **above}
    assert found(served, model, "IMAGE", keys, above) == expected


def test_the_empty_and_absent_series_of_an_empty_study(served: Served) -> None:
    """The EMPTY patient's own series: the empty and the absent one match any Modality."""
    above = {"StudyInstanceUID": served.study["EMPTY"]}
    assert found(served, qa.STUDY_ROOT_FIND, "SERIES", {"Modality": "US"}, above) \
        == {"empty", "absent"}
    assert found(served, qa.STUDY_ROOT_FIND, "SERIES", {"SeriesNumber": "3"}, above) \
        == {"empty", "absent"}
    above["SeriesInstanceUID"] = served.series[("EMPTY", "absent")]
    assert found(served, qa.STUDY_ROOT_FIND, "IMAGE", {"InstanceNumber": "7"}, above) \
        == {"empty", "absent"}


def test_an_index_from_before_keeps_no_leading_spaces_after_migration(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Leading spaces of SH and LO are padding (PS3.5 6.2): old rows lose them on upgrade."""
    from agent.archive import index as index_module
    from agent.archive.header import read_header
    from agent.archive.index import MIGRATIONS, Index, _migrate_to_4, add_instance

    [source] = dicomgen.write_series(tmp_path / "src", 1, size=8)
    header = read_header(source)
    path = tmp_path / "index.sqlite"
    # an index as the version before migration 4 (the leading-spaces one) wrote it
    monkeypatch.setattr(index_module, "MIGRATIONS", MIGRATIONS[:MIGRATIONS.index(_migrate_to_4)])
    with Index(path) as index, index.transaction() as conn:
        add_instance(conn, header.record(path="a.dcm", size=1, calling_ae="CT",
                                         received_at="2026-01-01T00:00:00+00:00"))
        conn.execute("UPDATE studies SET AccessionNumber = ' ACC1',"
                     " StudyDescription = '  CT HEAD'")  # as an older version stored them
    monkeypatch.undo()
    with Index(path) as index, index.reading() as conn:
        row = conn.execute("SELECT AccessionNumber, StudyDescription FROM studies").fetchone()
    assert tuple(row) == ("ACC1", "CT HEAD")

