"""C-FIND over the archive: each matching rule, each model and level, with real clients."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import dicomgen
import pytest
from pydicom.dataset import Dataset

from agent import config as config_module
from agent.app import Agent
from agent.archive import Archive
from tests import qr_archive as qa
from tests.qr_archive import identifier as q
from tests.support import dcmtk, free_port, peer, write_config


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[qa.Served]:
    yield from qa.build(tmp_path_factory.mktemp("qr"))


def names(answers: list[Dataset]) -> set[str]:
    return {str(a.PatientName) for a in answers}


@pytest.mark.parametrize(("keys", "expected"), [
    ({"PatientName": "doe*"}, {"DOE^JOHN", "doe^jane"}),  # PN ignores case
    ({"PatientName": "DOE^JOHN"}, {"DOE^JOHN"}),
    ({"PatientName": "DOE"}, set()),  # single value is not a prefix
    ({"PatientName": "M?LLER^J?RGEN"}, {"Müller^Jürgen"}),  # ? is one character
    ({"AccessionNumber": "ACC*"}, {"DOE^JOHN", "doe^jane", "Müller^Jürgen"}),  # SH: case
    ({"AccessionNumber": "acc5"}, {"SMITH^ANNA"}),
    ({"StudyDate": "20260101-"}, {"DOE^JOHN", "doe^jane", "SMITH^ANNA"}),
    ({"StudyDate": "-20251231"}, {"Müller^Jürgen"}),
    ({"StudyDate": "20260102-20260109"}, {"doe^jane"}),
    ({"StudyTime": "0800-0900"}, {"DOE^JOHN"}),
    ({"StudyTime": "14"}, {"SMITH^ANNA"}),  # reduced precision covers the hour
    ({"ModalitiesInStudy": "CT"}, {"DOE^JOHN", "doe^jane", "Müller^Jürgen"}),
    ({"PatientID": "P*"}, {"DOE^JOHN", "doe^jane", "Müller^Jürgen", "SMITH^ANNA"}),
    ({"PatientID": "p*"}, set()),
])
def test_study_level_matching(served: qa.Served, keys: dict[str, str],
                              expected: set[str]) -> None:
    query = q("STUDY", PatientName="")
    for keyword, value in keys.items():
        setattr(query, keyword, value)
    answers, status = qa.find(served.port, query)
    assert status == 0
    assert names(answers) == expected


def test_a_uid_list_matches_any_of_its_uids(served: qa.Served) -> None:
    wanted = f"{served.studies['P1']}\\{served.studies['P3']}"
    answers, _ = qa.find(served.port, q("STUDY", StudyInstanceUID=wanted, PatientID=""))
    assert {a.PatientID for a in answers} == {"P1", "P3"}


def test_a_study_answers_once_however_many_instances(served: qa.Served) -> None:
    answers, _ = qa.find(served.port, q("STUDY", PatientID="P1", StudyInstanceUID=""))
    assert len(answers) == 1


def test_universal_keys_come_back_even_when_empty_or_unknown(served: qa.Served) -> None:
    answers, _ = qa.find(served.port, q("STUDY", PatientID="P1", StudyDescription="",
                                        InstitutionalDepartmentName="",
                                        NumberOfStudyRelatedInstances="",
                                        NumberOfStudyRelatedSeries="", RetrieveAETitle=""))
    [answer] = answers
    assert answer.StudyDescription == "SYNTHETIC STUDY"
    assert "InstitutionalDepartmentName" in answer and not answer.InstitutionalDepartmentName
    assert (answer.NumberOfStudyRelatedInstances, answer.NumberOfStudyRelatedSeries) == (5, 1)
    assert answer.RetrieveAETitle == "EDGE"
    assert answer.StudyInstanceUID == served.studies["P1"]  # the level's unique key


def test_is_values_match_as_numbers_and_multi_valued_keys_match_any(served: qa.Served) -> None:
    series, _ = qa.find(served.port, q("SERIES", StudyInstanceUID=served.studies["P2"],
                                       SeriesNumber="07", Modality=""))
    assert [s.Modality for s in series] == ["MR"]
    [study] = qa.find(served.port, q("STUDY", PatientID="P2", ModalitiesInStudy=""))[0]
    assert list(study.ModalitiesInStudy) == ["CT", "MR"]


def test_sequence_matching_on_an_item_key(served: qa.Served) -> None:
    item = Dataset()
    item.CodeValue = "CTHEAD"
    item.CodeMeaning = ""
    answers, _ = qa.find(served.port, q("STUDY", ProcedureCodeSequence=[item], PatientID=""))
    assert [a.PatientID for a in answers] == ["P1"]
    assert answers[0].ProcedureCodeSequence[0].CodeMeaning == "CT HEAD"
    item.CodeValue = "NOTHING"
    assert qa.find(served.port, q("STUDY", ProcedureCodeSequence=[item]))[0] == []


def test_latin1_names_match_and_come_back_in_a_fitting_character_set(
        served: qa.Served) -> None:
    query = q("STUDY", PatientName="müller*")
    query.SpecificCharacterSet = "ISO_IR 100"
    [answer] = qa.find(served.port, query)[0]
    assert str(answer.PatientName) == "Müller^Jürgen"
    assert answer.SpecificCharacterSet == "ISO_IR 100"
    [utf8] = qa.find(served.port, q("STUDY", PatientName="MÜLLER*"))[0]
    assert utf8.SpecificCharacterSet == "ISO_IR 192"


@pytest.mark.parametrize(("model", "keys", "status"), [
    (qa.STUDY_ROOT_FIND, {"Modality": "CT"}, 0xA900),  # below the study level
    (qa.PATIENT_ROOT_FIND, {"StudyDate": ""}, 0xA900),  # no PatientID above the level
    (qa.STUDY_ROOT_FIND, {"StudyDate": "2026AB01"}, 0xC000),
    (qa.STUDY_ROOT_FIND, {"StudyTime": "1275"}, 0xC000),  # no 75th minute
    (qa.PATIENT_STUDY_FIND, {"QueryRetrieveLevel": "SERIES"}, 0xA900),
    (qa.STUDY_ROOT_FIND, {"QueryRetrieveLevel": "PATIENT"}, 0xA900),
])
def test_malformed_identifiers_fail_with_a_status(served: qa.Served, model: str,
                                                  keys: dict[str, str], status: int) -> None:
    query = q(str(keys.pop("QueryRetrieveLevel", "STUDY")), **keys)
    answers, final = qa.find(served.port, query, model=model)
    assert (answers, final) == ([], status)


def test_combined_date_time_matching_when_negotiated(served: qa.Served) -> None:
    keys = {"StudyDate": "20251231-20260101", "StudyTime": "2200-0900", "PatientID": ""}
    apart, _ = qa.find(served.port, q("STUDY", **keys))
    combined, _ = qa.find(served.port, q("STUDY", **keys), combined=True)
    assert {a.PatientID for a in apart} == set()  # 2300 and 0830 fail 2200-0900 apart
    assert {a.PatientID for a in combined} == {"P1", "P3"}


@pytest.mark.slow
def test_cancel_stops_the_pending_answers(tmp_path: Path) -> None:
    """findscu --cancel 1 against 1500 matches: the stream stops early with Cancel."""
    data = tmp_path / "data"
    study = dicomgen.Study()
    with Archive(data) as archive:  # filled through the ingest path, without the network
        for ds in dicomgen.series(1500, size=8, study=study):
            path = archive.layout.tmp_dir / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            archive.ingest(path, sop_class_uid=ds.SOPClassUID,
                           sop_instance_uid=ds.SOPInstanceUID, calling_ae="TEST")
        series_uid = str(ds.SeriesInstanceUID)
    config = config_module.load_file(write_config(
        tmp_path / "agent.toml",
        {"port": free_port(), "bind": "127.0.0.1", "data_dir": str(data), "min_free_mb": 0},
        {"WS": peer("WS", allow=("find",))}))
    with Agent(config):
        found, output = findscu(config.agent.port, "-S", "--cancel", "1",
                                "QueryRetrieveLevel=IMAGE",
                                f"StudyInstanceUID={study.study_uid}",
                                f"SeriesInstanceUID={series_uid}", "SOPInstanceUID")
    assert "Cancel" in output.split("Final Find Response")[-1], output[-500:]
    assert 1 <= found < 1500


def findscu(port: int, model_flag: str, *args: str, ae: str = "WS") -> tuple[int, str]:
    """DCMTK findscu: (number of pending answers, output); KEY=VALUE args become -k."""
    command = [dcmtk("findscu"), "-v", "-aet", ae, "-aec", "EDGE", model_flag, "127.0.0.1",
               str(port)]
    for arg in args:
        command += ["-k", arg] if "=" in arg or arg[:1].isupper() else [arg]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    return output.count("(Pending)"), output


@pytest.mark.parametrize(("flag", "level", "keys", "count"), [
    ("-P", "PATIENT", ("PatientName=*", "PatientID"), 4),
    ("-P", "STUDY", ("PatientID=P2", "StudyInstanceUID"), 1),
    ("-P", "SERIES", ("PatientID=P2", "StudyInstanceUID={P2}", "SeriesInstanceUID"), 2),
    ("-P", "IMAGE", ("PatientID=P2", "StudyInstanceUID={P2}", "SeriesInstanceUID={S}",
                     "SOPInstanceUID"), 0),
    ("-S", "STUDY", ("PatientName=DOE*", "StudyInstanceUID"), 2),
    ("-S", "SERIES", ("StudyInstanceUID={P2}", "Modality=MR", "SeriesInstanceUID"), 1),
    ("-S", "IMAGE", ("StudyInstanceUID={P1}", "SeriesInstanceUID={S1}", "SOPInstanceUID"), 5),
    ("-O", "PATIENT", ("PatientID=P*", "NumberOfPatientRelatedStudies"), 4),
    ("-O", "STUDY", ("PatientID=P3", "StudyDate", "StudyInstanceUID"), 1),
])
def test_findscu_in_every_model_and_level(served: qa.Served, flag: str, level: str,
                                          keys: tuple[str, ...], count: int) -> None:
    first_series = {}
    for pid in ("P1", "P2"):
        series, _ = qa.find(served.port, q("SERIES", StudyInstanceUID=served.studies[pid],
                                           SeriesInstanceUID=""))
        first_series[pid] = str(series[0].SeriesInstanceUID)
    filled = [k.format(P1=served.studies["P1"], P2=served.studies["P2"],
                       S1=first_series["P1"], S="1.2.3.4") for k in keys]
    found, output = findscu(served.port, flag, f"QueryRetrieveLevel={level}", *filled)
    assert found == count, output


def test_a_peer_without_find_permission_gets_no_find_context(served: qa.Served) -> None:
    found, output = findscu(served.port, "-S", "QueryRetrieveLevel=STUDY", ae="MODALITY")
    assert found == 0
    assert "No Acceptable Presentation Contexts" in output or "No presentation context" in output


def test_the_archive_is_unchanged_by_queries(served: qa.Served) -> None:
    counts = served.agent.archive.counts()  # type: ignore[union-attr]
    assert (counts.patients, counts.studies, counts.instances) == (4, 4, 12)
    assert Path(served.data_dir).is_dir()


@pytest.mark.parametrize(("keys", "index"), [
    ({"PatientName": "SMI*"}, "patients_name"),
    ({"StudyDate": "20260101-20260131"}, "studies_date"),
])
def test_prefix_wildcards_and_date_ranges_use_an_index(served: qa.Served, keys: dict[str, str],
                                                       index: str) -> None:
    from agent.archive.index import connect
    from agent.archive.query import plan
    from agent.dicom.models import Model

    statement, params = plan(Model.STUDY_ROOT, q("STUDY", **keys)).sql()
    conn = connect(served.data_dir / "index.sqlite", readonly=True)
    try:
        steps = conn.execute(f"EXPLAIN QUERY PLAN {statement}", params).fetchall()
    finally:
        conn.close()
    assert any(index in str(step) for step in steps), steps
