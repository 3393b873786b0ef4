"""Orthanc as a query/retrieve client of the agent, through Orthanc's REST API.

Orthanc knows the agent as the DicomModality ``EDGE``; the agent knows Orthanc as a peer
that may find, move and get, and as the C-MOVE destination it stores to. Orthanc 1.10.1
sends SERIES and IMAGE queries carrying PatientID and AccessionNumber with zero length
above the query level: the agent must answer them (PS3.4 C.2.2.2.3, universal matching
asks for nothing to be matched), not refuse them with 0xA900.
"""

from __future__ import annotations

import json
import urllib.error
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dicomgen
import pytest
from bench.peers import Orthanc

from agent import config as config_module
from agent.app import Agent
from tests import scu
from tests.support import free_port, peer, wait_until, write_config

# patient, study date, [(modality, instances)]
STUDIES = [
    ("DOE^JOHN", "P1", "20250110", [("CT", 4), ("MR", 2), ("CT", 1)]),
    ("Müller^Jürgen", "P2", "20260102", [("MR", 3)]),
]


@dataclass
class Setup:
    orthanc: Orthanc
    agent_port: int
    studies: dict[str, dict[str, set[str]]]  # study UID -> series UID -> instance UIDs

    @property
    def instances(self) -> set[str]:
        return {i for series in self.studies.values() for s in series.values() for i in s}

    def rest(self, path: str, body: Any = None) -> Any:
        """Orthanc's REST API; an HTTP error fails with Orthanc's own explanation."""
        data = None if body is None else json.dumps(body).encode()
        try:
            return self.orthanc.rest(path, data)
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")
            log = (self.orthanc.workdir / "log.txt").read_text(errors="replace")[-1500:]
            raise AssertionError(f"Orthanc {path}: HTTP {error.code}\n{detail}\n"
                                 f"Orthanc's log ends:\n{log}") from None


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("orthanc-client")
    agent_port = free_port()
    files: list[Path] = []
    studies: dict[str, dict[str, set[str]]] = {}
    for name, pid, date, series_list in STUDIES:
        study = dicomgen.Study(patient_name=name, patient_id=pid, study_date=date,
                               accession=f"A{pid}")
        studies[study.study_uid] = {}
        for number, (modality, count) in enumerate(series_list, 1):
            for ds in dicomgen.series(count, modality=modality, study=study, size=8):
                ds.SeriesNumber = number
                studies[study.study_uid].setdefault(str(ds.SeriesInstanceUID), set()).add(
                    str(ds.SOPInstanceUID))
                path = root / "src" / f"{ds.SOPInstanceUID}.dcm"
                path.parent.mkdir(parents=True, exist_ok=True)
                ds.save_as(path, enforce_file_format=True)
                files.append(path)
    with Orthanc(root / "orthanc", {"EDGE": ["EDGE", "127.0.0.1", agent_port]}) as orthanc:
        config = config_module.load_file(write_config(
            root / "agent.toml",
            {"ae_title": "EDGE", "port": agent_port, "bind": "127.0.0.1",
             "data_dir": str(root / "data"), "min_free_mb": 0},
            {"CT": peer("MODALITY", allow=("store",)),
             "ORTHANC": peer(orthanc.ae_title, orthanc.port,
                             ("echo", "find", "move", "get", "store"))}))
        with Agent(config):
            assert scu.store(agent_port, files) == [0] * len(files)
            yield Setup(orthanc, agent_port, studies)


def answers(setup: Setup, query_id: str) -> list[dict[str, str]]:
    """The answers of an Orthanc query, as {keyword: value}."""
    found = []
    for index in setup.rest(f"/queries/{query_id}/answers"):
        content = setup.rest(f"/queries/{query_id}/answers/{index}/content?simplify")
        found.append({k: v for k, v in content.items() if isinstance(v, str)})
    return found


def study_query(setup: Setup) -> str:
    query = setup.rest("/modalities/EDGE/query",
                       {"Level": "Study", "Query": {"PatientID": "", "StudyDate": "",
                                                    "ModalitiesInStudy": ""}})
    return str(query["ID"])


def test_orthanc_echoes_the_agent(setup: Setup) -> None:
    setup.rest("/modalities/EDGE/echo", {})


def test_a_study_query_lists_the_agents_studies(setup: Setup) -> None:
    found = answers(setup, study_query(setup))
    assert {a["StudyInstanceUID"] for a in found} == set(setup.studies)
    by_patient = {a["PatientID"]: a for a in found}
    assert by_patient["P1"]["StudyDate"] == "20250110"
    assert sorted(by_patient["P1"]["ModalitiesInStudy"].split("\\")) == ["CT", "MR"]


def test_query_series_of_a_study_answer_lists_its_series(setup: Setup) -> None:
    """Orthanc's follow-up query carries empty PatientID and AccessionNumber above SERIES."""
    query = study_query(setup)
    for index, study in enumerate(answers(setup, query)):
        series_query = setup.rest(f"/queries/{query}/answers/{index}/query-series", {})
        series = answers(setup, str(series_query["ID"]))
        uid = study["StudyInstanceUID"]
        assert {s["SeriesInstanceUID"] for s in series} == set(setup.studies[uid]), uid
        assert all(s.get("StudyInstanceUID", uid) == uid for s in series)


def test_a_series_level_query_by_study_uid(setup: Setup) -> None:
    for uid, series in setup.studies.items():
        query = setup.rest("/modalities/EDGE/query",
                           {"Level": "Series", "Query": {"StudyInstanceUID": uid,
                                                         "Modality": "", "SeriesNumber": ""}})
        found = answers(setup, str(query["ID"]))
        assert {s["SeriesInstanceUID"] for s in found} == set(series)


def test_query_instances_of_each_series(setup: Setup) -> None:
    query = study_query(setup)
    for index, study in enumerate(answers(setup, query)):
        uid = study["StudyInstanceUID"]
        series_query = str(setup.rest(f"/queries/{query}/answers/{index}/query-series",
                                      {})["ID"])
        for number, series in enumerate(answers(setup, series_query)):
            instance_query = setup.rest(
                f"/queries/{series_query}/answers/{number}/query-instances", {})
            found = answers(setup, str(instance_query["ID"]))
            assert {i["SOPInstanceUID"] for i in found} == \
                setup.studies[uid][series["SeriesInstanceUID"]]


def test_an_instance_level_query_by_uids(setup: Setup) -> None:
    uid, series = next(iter(setup.studies.items()))
    series_uid, instances = next(iter(series.items()))
    query = setup.rest("/modalities/EDGE/query",
                       {"Level": "Instance", "Query": {"StudyInstanceUID": uid,
                                                       "SeriesInstanceUID": series_uid,
                                                       "InstanceNumber": ""}})
    assert {i["SOPInstanceUID"] for i in answers(setup, str(query["ID"]))} == instances


def held_by_orthanc(setup: Setup) -> set[str]:
    return {setup.rest(f"/instances/{i}/simplified-tags")["SOPInstanceUID"]
            for i in setup.rest("/instances")}


def test_move_one_series_with_the_modalities_move_route(setup: Setup) -> None:
    """POST /modalities/EDGE/move of one series: the agent sends just that series."""
    uid, series = next(iter(setup.studies.items()))
    series_uid, instances = sorted(series.items(), key=lambda s: len(s[1]))[-1]
    before = held_by_orthanc(setup)
    setup.rest("/modalities/EDGE/move", {
        "Level": "Series", "TargetAet": setup.orthanc.ae_title, "Synchronous": True,
        "Resources": [{"StudyInstanceUID": uid, "SeriesInstanceUID": series_uid}]})
    wait_until(lambda: instances <= held_by_orthanc(setup), 60, "the series in Orthanc")
    assert held_by_orthanc(setup) - before <= instances


def test_retrieve_by_c_move_brings_every_instance_into_orthanc(setup: Setup) -> None:
    """C-MOVE each study answer to Orthanc itself; Orthanc then holds every instance."""
    query = study_query(setup)
    setup.rest(f"/queries/{query}/retrieve",
               {"TargetAet": setup.orthanc.ae_title, "Synchronous": True})
    wait_until(lambda: setup.orthanc.count() == len(setup.instances), 60,
               "Orthanc to hold every instance")
    assert held_by_orthanc(setup) == setup.instances
    statistics = setup.rest("/statistics")
    assert (statistics["CountStudies"], statistics["CountSeries"]) == (
        len(setup.studies), sum(len(s) for s in setup.studies.values()))
