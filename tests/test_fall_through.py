"""Fall-through Query/Retrieve: DCMTK as the workstation, Orthanc as the PACS.

The patient has a study only here (LOCAL), two only at Orthanc (REMOTE_MOVE, REMOTE_GET)
and one half here, half there (SPLIT: its first series in both places, its second only
at Orthanc). WS falls through to Orthanc; NEARBY is told not to (``fall_through = false``).
"""

from __future__ import annotations

import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dicomgen
import pytest
from bench.peers import Orthanc
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)

from agent import config as config_module
from agent.app import Agent
from agent.dicom.models import Model
from tests import scu
from tests.pacs import Dcmqrscp
from tests.scripted_pacs import ScriptedPacs
from tests.support import dcmtk, free_port, peer, storescp, write_config

PATIENT = "FT0001"
WS_FLAGS = ("-aet", "WS", "-aec", "EDGE")


@dataclass
class Site:
    """The agent, Orthanc, and which study is where."""

    root: Path
    agent: Agent
    orthanc: Orthanc
    studies: dict[str, str]  # name: StudyInstanceUID
    files: dict[str, list[Path]]  # name: the files made for it
    dest_port: int

    @property
    def port(self) -> int:
        return self.agent.config.agent.port


def make_study(root: Path, name: str, series_counts: tuple[int, ...]) -> list[list[Path]]:
    """A study of the patient, one list of files per series."""
    study = dicomgen.Study(patient_id=PATIENT, patient_name="FALL^THROUGH",
                           study_date="20250101", accession=name[:16])
    return [dicomgen.write_series(root / name / str(i), count, size=32, study=study)
            for i, count in enumerate(series_counts)]


def upload(orthanc: Orthanc, paths: list[Path]) -> None:
    for path in paths:
        orthanc.rest("/instances", data=path.read_bytes())


def fall_through_config(root: Path, port: int, pacs_port: int, dest_port: int, *,
                        pacs_ae: str = "ORTHANC", timeout: float = 3,
                        forward_to_pacs: bool = False) -> config_module.Config:
    """WS falls through to PACS (which may store to us); NEARBY does not."""
    path = write_config(
        root / "agent.toml",
        {"ae_title": "EDGE", "port": port, "bind": "127.0.0.1",
         "data_dir": str(root / "data"), "min_free_mb": 0},
        {"CT": peer("MODALITY", allow=("store",)),
         "WS": peer("WS", allow=("echo", "find", "move", "get")),
         "NEARBY": {**peer("NEARBY", allow=("find", "move")), "fall_through": False},
         "PACS": peer(pacs_ae, pacs_port, allow=("echo", "store")),
         "DEST": peer("DEST", dest_port)},
    )
    with path.open("a") as handle:
        handle.write(f'\n[qr]\nfall_through = ["PACS"]\nfall_through_timeout = {timeout}\n')
        if forward_to_pacs:
            handle.write('\n[forward]\nto = ["PACS"]\n')
    return config_module.load_file(path)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("fallthrough")
    port, dest_port = free_port(), free_port()
    made = {name: make_study(root / "made", name, counts) for name, counts in
            {"LOCAL": (3,), "REMOTE_MOVE": (6, 4), "REMOTE_GET": (5,), "SPLIT": (4, 4)}.items()}
    with Orthanc(root / "orthanc", modalities={"EDGE": ["EDGE", "127.0.0.1", port]}) as orthanc:
        for name in ("REMOTE_MOVE", "REMOTE_GET", "SPLIT"):
            upload(orthanc, [p for series in made[name] for p in series])
        config = fall_through_config(root, port, orthanc.port, dest_port)
        with Agent(config) as agent:
            local = made["LOCAL"][0] + made["SPLIT"][0]
            assert scu.store(port, local) == [0] * len(local)
            studies = {name: str(dcmread(series[0][0]).StudyInstanceUID)
                       for name, series in made.items()}
            files = {name: [p for s in series for p in s] for name, series in made.items()}
            yield Site(root, agent, orthanc, studies, files, dest_port)


def findscu(port: int, out: Path, *args: str, calling: str = "WS"
            ) -> tuple[subprocess.CompletedProcess[str], list]:
    """A study-level C-FIND for the patient; the completed process and the answers."""
    out.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [dcmtk("findscu"), "-aet", calling, "-aec", "EDGE", "-S", "-X", "-od", str(out),
         "-k", "QueryRetrieveLevel=STUDY", "-k", f"PatientID={PATIENT}",
         "-k", "StudyInstanceUID", "-k", "AccessionNumber", "-k", "InstanceAvailability",
         "-k", "RetrieveAETitle", *args, "127.0.0.1", str(port)],
        capture_output=True, text=True, timeout=60)
    return result, [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def test_find_lists_the_pacs_studies_nearline_and_each_study_once(site: Site, tmp_path: Path
                                                                  ) -> None:
    result, answers = findscu(site.port, tmp_path)
    assert result.returncode == 0, result.stderr
    by_study = {str(a.StudyInstanceUID): a for a in answers}
    assert len(answers) == len(by_study) == 4  # SPLIT is here and there: once
    availability = {name: by_study[uid].InstanceAvailability
                    for name, uid in site.studies.items()}
    assert availability == {"LOCAL": "ONLINE", "SPLIT": "ONLINE",
                            "REMOTE_MOVE": "NEARLINE", "REMOTE_GET": "NEARLINE"}
    assert {a.RetrieveAETitle for a in answers} == {"EDGE"}
    assert {a.AccessionNumber for a in answers} == set(site.studies)  # keys asked are kept
    remote = by_study[site.studies["REMOTE_GET"]]
    asked = {"QueryRetrieveLevel", "PatientID", "StudyInstanceUID", "AccessionNumber",
             "InstanceAvailability", "RetrieveAETitle", "SpecificCharacterSet"}
    assert {e.keyword for e in remote} <= asked  # nothing the requester did not ask for


def test_a_requester_without_fall_through_gets_local_answers_only(site: Site, tmp_path: Path
                                                                  ) -> None:
    result, answers = findscu(site.port, tmp_path, calling="NEARBY")
    assert result.returncode == 0, result.stderr
    assert {str(a.StudyInstanceUID) for a in answers} == {
        site.studies["LOCAL"], site.studies["SPLIT"]}


def orthanc_copies(orthanc: Orthanc, study_uid: str) -> dict[str, bytes]:
    """Orthanc's files of a study, by SOP Instance UID (data set bytes)."""
    found = orthanc.rest("/tools/find", data=(
        f'{{"Level": "Instance", "Query": {{"StudyInstanceUID": "{study_uid}"}}, '
        f'"Expand": true}}').encode())
    copies = {}
    for instance in found:
        path = Path(orthanc.workdir) / "copy.dcm"
        url = f"http://127.0.0.1:{orthanc.http_port}/instances/{instance['ID']}/file"
        with urllib.request.urlopen(url, timeout=30) as answer:
            path.write_bytes(answer.read())
        copies[instance["MainDicomTags"]["SOPInstanceUID"]] = dicomgen.dataset_bytes(path)
    return copies


def received(directory: Path) -> dict[str, bytes]:
    """What a storescp or getscu wrote, by SOP Instance UID (data set bytes)."""
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): dicomgen.dataset_bytes(p)
            for p in sorted(directory.iterdir()) if p.is_file()}


def study_keys(study_uid: str) -> list[str]:
    return ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}"]


def held(site: Site, study_uid: str) -> int:
    """How many instances of the study the box holds."""
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study_uid
    return len(site.agent.archive.resolve(Model.STUDY_ROOT, identifier))


@pytest.mark.parametrize("name", ["REMOTE_MOVE", "SPLIT"])
def test_movescu_gets_a_study_held_at_the_pacs_whole_and_byte_identical(
        site: Site, tmp_path: Path, name: str) -> None:
    study = site.studies[name]
    destination = storescp(tmp_path / "dest", site.dest_port)
    try:
        result = subprocess.run(
            [dcmtk("movescu"), *WS_FLAGS, "-aem", "DEST", "-S", *study_keys(study),
             "127.0.0.1", str(site.port)], capture_output=True, text=True, timeout=120)
    finally:
        destination.terminate()
        destination.wait(10)
    assert result.returncode == 0, result.stderr
    expected = orthanc_copies(site.orthanc, study)
    assert len(expected) == len(site.files[name])
    assert received(tmp_path / "dest") == expected
    assert held(site, study) == len(expected)  # the box keeps what it pulled


def test_getscu_gets_a_study_held_at_the_pacs(site: Site, tmp_path: Path) -> None:
    study = site.studies["REMOTE_GET"]
    target = tmp_path / "got"
    target.mkdir()
    result = subprocess.run(
        [dcmtk("getscu"), *WS_FLAGS, "-S", "-od", str(target), *study_keys(study),
         "127.0.0.1", str(site.port)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert received(target) == orthanc_copies(site.orthanc, study)
    assert held(site, study) == len(site.files["REMOTE_GET"])


def beside(root: Path, pacs: ScriptedPacs | int, dest_port: int, *, port: int = 0,
           timeout: float = 1.0) -> Agent:
    """An agent beside the site's, falling through to a scripted PACS (or a port)."""
    pacs_port = pacs if isinstance(pacs, int) else pacs.port
    return Agent(fall_through_config(root, port or free_port(), pacs_port, dest_port,
                                     pacs_ae=ScriptedPacs.ae_title, timeout=timeout))


@pytest.mark.parametrize("pacs", ["stopped", "silent"])
def test_local_answers_come_and_the_status_says_the_pacs_part_is_missing(
        site: Site, tmp_path: Path, pacs: str) -> None:
    local = site.files["LOCAL"]
    with ScriptedPacs([], {}, silent=True) as silent:
        port = silent.port if pacs == "silent" else free_port()  # nothing listens there
        with beside(tmp_path, port, site.dest_port) as agent:
            assert scu.store(agent.config.agent.port, local) == [0] * len(local)
            statuses, answers = find_with_pynetdicom(
                agent.config.agent.port, silent if pacs == "silent" else None)
            # DCMTK reads one final response and releases cleanly (no stray Success)
            result, found = findscu(agent.config.agent.port, tmp_path / "found")
    assert result.returncode == 0, result.stderr
    assert [str(a.StudyInstanceUID) for a in found] == [site.studies["LOCAL"]]
    assert [str(a.StudyInstanceUID) for a in answers] == [site.studies["LOCAL"]]
    final = statuses[-1]
    assert final.Status == 0xB001  # Warning: a later request may return more
    assert "PACS part is incomplete" in final.ErrorComment


def find_with_pynetdicom(port: int, silent: ScriptedPacs | None, *, cancel: bool = False
                         ) -> tuple[list[Dataset], list[Dataset]]:
    """A study-level C-FIND as WS: the statuses and the answers. The first local answer
    comes while the ``silent`` PACS has been asked and has not answered (it never does):
    the local answers do not wait for it; ``cancel``: a C-CANCEL follows that answer."""
    ae = AE(ae_title="WS")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="EDGE")
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.PatientID = PATIENT
    identifier.StudyInstanceUID = ""
    statuses, answers = [], []
    try:
        for status, answer in assoc.send_c_find(
                identifier, StudyRootQueryRetrieveInformationModelFind, msg_id=7):
            statuses.append(status)
            if answer is not None and status.Status == 0xFF00:
                answers.append(answer)
                if silent is not None and len(answers) == 1:
                    assert silent.asked.wait(10), "the PACS was never asked"
                if cancel and len(answers) == 1:
                    assoc.send_c_cancel(7, assoc.accepted_contexts[0].context_id)
    finally:
        assoc.release()
    return statuses, answers


def test_a_cancel_stops_the_local_answers_and_the_pacs_query(site: Site, tmp_path: Path
                                                              ) -> None:
    with ScriptedPacs([], {}, silent=True) as silent, \
            beside(tmp_path, silent, site.dest_port, timeout=30) as agent:
        local = site.files["LOCAL"]
        assert scu.store(agent.config.agent.port, local) == [0] * len(local)
        statuses, answers = find_with_pynetdicom(agent.config.agent.port, silent, cancel=True)
        assert silent.cancelled.wait(10), "the PACS's C-FIND was not cancelled"
    assert [s.Status for s in statuses] == [0xFF00, 0xFE00]
    assert len(answers) == 1


def test_a_pacs_that_fails_some_sub_operations_gives_the_requester_those_uids(
        site: Site, tmp_path: Path) -> None:
    paths = site.files["REMOTE_GET"]
    uids = [str(dcmread(p).SOPInstanceUID) for p in paths]
    failing = frozenset(uids[1:3])
    port = free_port()
    with ScriptedPacs(paths, {"EDGE": port}, failing=failing) as pacs, \
            beside(tmp_path, pacs, site.dest_port, port=port) as agent:
        status, identifier, got = get_with_pynetdicom(agent.config.agent.port,
                                                      site.studies["REMOTE_GET"])
    assert status.Status == 0xB000
    assert sorted(identifier.FailedSOPInstanceUIDList) == sorted(failing)
    assert got == set(uids) - failing


def get_with_pynetdicom(port: int, study_uid: str) -> tuple[Dataset, Dataset, set[str]]:
    """A study-level C-GET as WS: the final status, its identifier, the UIDs received."""
    got: set[str] = set()

    def keep(event: Any) -> int:
        got.add(str(event.request.AffectedSOPInstanceUID))
        return 0

    ae = AE(ae_title="WS")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage)
    role = build_role(CTImageStorage, scp_role=True)
    assoc = ae.associate("127.0.0.1", port, ae_title="EDGE", ext_neg=[role],
                         evt_handlers=[(evt.EVT_C_STORE, keep)])
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study_uid
    try:
        responses = list(assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet))
    finally:
        assoc.release()
    status, final = responses[-1]
    return status, final, got


@pytest.mark.parametrize("knows_us", [True, False])
def test_a_strict_pacs_is_asked_level_by_level_and_pulled_from_by_move_or_get(
        site: Site, tmp_path: Path, knows_us: bool) -> None:
    """dcmqrscp answers only hierarchical queries; one that does not know the box as a
    move destination (0xA801) is pulled from by C-GET. What lands is not forwarded back."""
    paths = site.files["REMOTE_MOVE"]
    port = free_port()
    hosts = {"edge": ("EDGE", port)} if knows_us else {}
    with Dcmqrscp(tmp_path / "dcmqrscp", hosts) as pacs:
        pacs.load(paths)
        config = fall_through_config(tmp_path, port, pacs.port, site.dest_port,
                                     pacs_ae=Dcmqrscp.ae_title, forward_to_pacs=True)
        with Agent(config) as agent:
            status, _, got = get_with_pynetdicom(port, site.studies["REMOTE_MOVE"])
            # never forwarded back to the PACS it came from: no job, waiting or done
            assert agent.archive.outbox.depth() == {}
            assert agent.archive.outbox.delivered(None, 100) == []
    assert status.Status == 0x0000
    assert got == {str(dcmread(p).SOPInstanceUID) for p in paths}


def test_a_bad_level_is_refused_as_it_is_without_fall_through(site: Site, tmp_path: Path
                                                              ) -> None:
    finals = []
    for calling in ("WS", "NEARBY"):
        result, answers = findscu(site.port, tmp_path / calling, "-v", "-k",
                                  "QueryRetrieveLevel=WARD", calling=calling)
        assert answers == []
        finals += [line for line in result.stderr.splitlines() if "Final Find Response" in line]
    assert len(finals) == 2 and finals[0] == finals[1] and "Success" not in finals[0]
