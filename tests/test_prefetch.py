"""Prefetch against real parts: Orthanc plays the PACS holding a patient's priors, DCMTK's
storescu the CT sending a new study, pynetdicom the CT announcing one by MPPS."""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dicomgen
import pytest
from bench.peers import Orthanc
from pydicom import dcmread

from agent import config as config_module
from agent.app import Agent
from agent.archive import Layout
from agent.archive.index import connect
from agent.archive.prefetch_jobs import DONE, FAILED, RETRYING
from agent.prefetch import worker
from tests import mpps_peers
from tests.support import dcmtk, free_port, peer, run_cli, wait_until, write_config

AGENT_PORT = free_port()  # Orthanc must know where to C-MOVE to before it starts
TODAY = dt.date.today()
PATIENTS = itertools.count(1)


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """Orthanc as the PACS, knowing the agent (EDGE) as a move destination."""
    root = tmp_path_factory.mktemp("prefetch-pacs")
    with Orthanc(root / "orthanc", {"EDGE": ["EDGE", "127.0.0.1", AGENT_PORT]}) as orthanc:
        yield orthanc


def years_ago(years: float) -> str:
    return (TODAY - dt.timedelta(days=round(years * 365.25))).strftime("%Y%m%d")


class Patient:
    """A patient of its own (so tests do not see each other's studies at the PACS) with
    five studies at Orthanc: CT 1, 2 and 3 years old (priors), an MR a year old and a CT
    eight years old (neither is one), each 5 instances of 128 KiB."""

    def __init__(self, root: Path, pacs: Orthanc) -> None:
        self.id = f"PF{next(PATIENTS):04d}"
        self.root = root
        self.priors: dict[str, str] = {}  # label -> StudyInstanceUID
        for label, modality, age in (("ct1", "CT", 1), ("ct2", "CT", 2), ("ct3", "CT", 3),
                                     ("mr1", "MR", 1), ("ct8", "CT", 8)):
            study = dicomgen.Study("PRIOR^PATIENT", self.id, study_date=years_ago(age))
            for path in dicomgen.write_series(root / label, 5, study=study, modality=modality,
                                              size=256):
                pacs.rest("/instances", path.read_bytes())
            self.priors[label] = study.study_uid

    def new_study(self, name: str = "new") -> tuple[str, list[Path]]:
        """Today's CT for the patient, as files for storescu."""
        study = dicomgen.Study("PRIOR^PATIENT", self.id, study_date=TODAY.strftime("%Y%m%d"))
        return study.study_uid, dicomgen.write_series(self.root / name, 4, study=study)


def agent_config(root: Path, pacs_port: int, *, max_studies: int = 3,
                 max_megabytes: int = 2000, forward: bool = True) -> Path:
    """The agent: CT1 (the modality) triggers, priors from PACS, forwarding to PACS."""
    path = write_config(
        root / "agent.toml",
        {"ae_title": "EDGE", "port": AGENT_PORT, "bind": "127.0.0.1",
         "data_dir": str(root / "data"), "min_free_mb": 0},
        {"CT1": peer("CT1", allow=("echo", "store", "mpps")),
         "PACS": peer("ORTHANC", pacs_port, ("echo", "store"))},
    )
    lines = ["", "[forward]", 'to = ["PACS"]'] if forward else []
    lines += ["", "[[prefetch]]", 'from = ["CT1"]', 'priors_from = "PACS"', 'modality = "same"',
              "within_years = 5", f"max_studies = {max_studies}",
              f"max_megabytes = {max_megabytes}"]
    path.write_text(path.read_text() + "\n".join(lines) + "\n")
    return path


def storescu(paths: list[Path], calling: str = "CT1") -> None:
    result = subprocess.run([dcmtk("storescu"), "-aet", calling, "-aec", "EDGE", "127.0.0.1",
                             str(AGENT_PORT), *map(str, paths)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def rows(data_dir: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    conn = connect(Layout(data_dir).index_path, readonly=True)
    try:
        return list(conn.execute(sql, args).fetchall())
    finally:
        conn.close()


def jobs(data_dir: Path) -> list[tuple[object, ...]]:
    """(trigger, trigger_study, state, studies, bytes, last_error, started_at) per job."""
    return rows(data_dir, "SELECT trigger, trigger_study, state, studies, bytes, last_error,"
                " started_at FROM prefetch_jobs ORDER BY pk")


def ended(data_dir: Path) -> list[tuple[object, ...]] | None:
    found = jobs(data_dir)
    return found if found and all(j[2] in (DONE, FAILED) for j in found) else None


def held_studies(data_dir: Path) -> set[str]:
    return {str(r[0]) for r in rows(data_dir, "SELECT StudyInstanceUID FROM studies")}


def same_as_orthanc(data_dir: Path, study_uid: str, pacs: Orthanc, tmp: Path) -> int:
    """Every archived instance of the study carries Orthanc's data set byte for byte."""
    archived = rows(data_dir, "SELECT i.SOPInstanceUID, i.path FROM instances i JOIN series se"
                    " ON i.series_pk = se.pk JOIN studies st ON se.study_pk = st.pk"
                    " WHERE st.StudyInstanceUID = ?", study_uid)
    for sop_uid, relative in archived:
        [found] = pacs.rest("/tools/lookup", str(sop_uid).encode())
        copy = tmp / f"{sop_uid}.dcm"
        copy.write_bytes(_raw(pacs, f"/instances/{found['ID']}/file"))
        assert dicomgen.dataset_bytes(data_dir / str(relative)) == dicomgen.dataset_bytes(copy)
    return len(archived)


def _raw(pacs: Orthanc, path: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{pacs.http_port}{path}", timeout=30) as r:
        return bytes(r.read())


@pytest.mark.parametrize(("max_studies", "max_megabytes", "expected"), [
    (1, 2000, ("ct1",)),  # the newest only: max_studies
    (3, 1, ("ct1", "ct2")),  # 640 KiB landed < 1 MB, the second crosses it and is the last
])
def test_a_new_study_from_the_modality_brings_its_priors_within_the_limits(
    tmp_path: Path, pacs: Orthanc, running: list[Agent], max_studies: int,
    max_megabytes: int, expected: tuple[str, ...], caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    patient = Patient(tmp_path, pacs)
    config = agent_config(tmp_path, pacs.port, max_studies=max_studies,
                          max_megabytes=max_megabytes)
    agent = Agent(config_module.load_file(config))
    running.append(agent)
    agent.start()
    study_uid, files = patient.new_study()
    storescu(files)
    data = tmp_path / "data"
    [job] = wait_until(lambda: ended(data), 90, "the prefetch job to end")
    assert job[:3] == ("study", study_uid, DONE), job
    wanted = {patient.priors[label] for label in expected}
    assert held_studies(data) == wanted | {study_uid}
    assert job[3] == len(expected)
    assert sum(same_as_orthanc(data, uid, pacs, tmp_path) for uid in wanted) == 5 * len(wanted)
    assert job[4] == sum(int(r[0]) for r in rows(
        data, "SELECT sum(size) FROM instances i JOIN series se ON i.series_pk = se.pk"
        " JOIN studies st ON se.study_pk = st.pk WHERE st.StudyInstanceUID != ?", study_uid))
    # forwarding first: the new study was delivered to the PACS before the job's first query
    delivered = rows(data, "SELECT max(done_at), count(*) FROM forward_jobs WHERE state = 'done'"
                     " AND SOPInstanceUID IN (SELECT i.SOPInstanceUID FROM instances i JOIN"
                     " series se ON i.series_pk = se.pk JOIN studies st ON se.study_pk = st.pk"
                     " WHERE st.StudyInstanceUID = ?)", study_uid)
    last_delivery, count = delivered[0]
    assert count == len(files)
    assert float(str(last_delivery)) <= float(str(job[6]))
    # and the priors are not forwarded back to the PACS they came from
    assert rows(data, "SELECT count(*) FROM forward_jobs")[0][0] == len(files)
    assert any("prefetch #" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if patient.id in r.getMessage()]  # never logged


def test_prefetch_by_hand_is_picked_up_by_the_running_agent_and_shown(
    tmp_path: Path, pacs: Orthanc, running: list[Agent]
) -> None:
    patient = Patient(tmp_path, pacs)
    config = agent_config(tmp_path, pacs.port, max_studies=5)
    agent = Agent(config_module.load_file(config))
    running.append(agent)
    agent.start()
    asked = run_cli("prefetch", patient.id, "--from", "PACS", "--config", str(config))
    assert asked.returncode == 0, asked.stdout + asked.stderr
    assert "queued" in asked.stdout and patient.id not in asked.stderr
    data = tmp_path / "data"
    [job] = wait_until(lambda: ended(data), 90, "the prefetch job to end")
    # by hand: no trigger study, so "same" is any modality; the 8-year-old CT stays out
    assert job[:2] == ("hand", None) and job[2] == DONE and job[3] == 4
    assert held_studies(data) == {patient.priors[k] for k in ("ct1", "ct2", "ct3", "mr1")}
    listing = run_cli("queue", "--config", str(config))
    assert "prefetch: 0 queued, 0 running, 0 retrying, 0 failed, 1 done" in listing.stdout
    status = run_cli("status", "--config", str(config))
    assert "prefetch  0 queued, 0 running, 0 retrying, 0 failed, 1 done" in status.stdout


def test_a_pacs_that_is_down_is_retried_and_the_job_survives_a_restart(
    tmp_path: Path, pacs: Orthanc, running: list[Agent], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker, "RETRY_FIRST", 0.2)
    patient = Patient(tmp_path, pacs)
    down = agent_config(tmp_path, free_port(), forward=False)  # nothing listens there
    first = Agent(config_module.load_file(down))
    running.append(first)
    first.start()
    study_uid, files = patient.new_study()
    storescu(files)
    data = tmp_path / "data"

    def retried() -> bool:
        found = jobs(data)
        attempts = rows(data, "SELECT attempts FROM prefetch_jobs")
        return bool(found) and found[0][2] == RETRYING and int(str(attempts[0][0])) >= 2

    wait_until(retried, 60, "the job to be retried")
    assert "ORTHANC" in str(jobs(data)[0][5])  # the reason names the PACS it could not reach
    first.close()
    again = Agent(config_module.load_file(agent_config(tmp_path, pacs.port, forward=False)))
    running.append(again)
    again.start()
    [job] = wait_until(lambda: ended(data), 90, "the job to end after the restart")
    assert job[:3] == ("study", study_uid, DONE) and job[3] == 3
    assert held_studies(data) == {patient.priors[k] for k in ("ct1", "ct2", "ct3")} | {study_uid}


def test_an_mpps_in_progress_from_the_modality_queues_the_prefetch(
    tmp_path: Path, pacs: Orthanc, running: list[Agent]
) -> None:
    patient = Patient(tmp_path, pacs)
    config = agent_config(tmp_path, pacs.port, max_studies=2, forward=False)
    agent = Agent(config_module.load_file(config))
    running.append(agent)
    agent.start()
    announced = dcmread(patient.new_study()[1][0], stop_before_pixels=True).StudyInstanceUID
    step = mpps_peers.creation(str(announced))
    step.PatientID = patient.id
    modality = mpps_peers.Modality(AGENT_PORT, calling_ae="CT1")
    try:
        assert int(modality.create(step, None).Status) == 0
    finally:
        modality.close()
    data = tmp_path / "data"
    [job] = wait_until(lambda: ended(data), 90, "the prefetch job to end")
    assert job[:3] == ("mpps", str(announced), DONE) and job[3] == 2
    assert held_studies(data) == {patient.priors["ct1"], patient.priors["ct2"]}


def test_a_pacs_that_does_not_know_the_agent_as_destination_is_fetched_from_by_c_get(
    tmp_path: Path, running: list[Agent]
) -> None:
    with Orthanc(tmp_path / "stranger") as stranger:  # no DicomModalities: C-MOVE is 0xA801
        patient = Patient(tmp_path, stranger)
        config = agent_config(tmp_path, stranger.port, max_studies=2, forward=False)
        agent = Agent(config_module.load_file(config))
        running.append(agent)
        agent.start()
        study_uid, files = patient.new_study()
        storescu(files)
        data = tmp_path / "data"
        [job] = wait_until(lambda: ended(data), 90, "the prefetch job to end")
        assert job[:3] == ("study", study_uid, DONE) and job[3] == 2, job
        wanted = {patient.priors["ct1"], patient.priors["ct2"]}
        assert held_studies(data) == wanted | {study_uid}
        assert sum(same_as_orthanc(data, uid, stranger, tmp_path) for uid in wanted) == 10
