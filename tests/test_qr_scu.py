"""``edge-agent find`` and ``retrieve`` against real PACSes: Orthanc and DCMTK's dcmqrscp."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dicomgen
import pytest
from bench.peers import Orthanc
from pydicom import dcmread
from pynetdicom import evt

from agent import config as config_module
from agent.app import Agent
from agent.archive import Layout
from agent.archive.index import connect
from agent.dicom.contexts import VERIFICATION
from agent.errors import PeerError
from agent.net.scu import Requestor, Target
from tests.pacs import Dcmqrscp
from tests.support import (
    AgentProcess,
    dcmtk,
    free_port,
    peer,
    run_cli,
    wait_until,
    write_config,
)

AGENT_PORT = free_port()


@dataclass
class Studies:
    """The generated studies every PACS here holds."""

    prior: list[Path]  # DOE^JOHN, 2026-01-15: 150 CT + 50 MR = 200 instances
    prior_uid: str
    mr_series_uid: str
    other: list[Path]  # SMITH^ANNA, 2025-03-01, 3 MR
    third: list[Path]  # DOE^JANE, 2026-02-20, 2 CT

    @property
    def everything(self) -> list[Path]:
        return self.prior + self.other + self.third


@dataclass
class Pacs:
    orthanc: Orthanc
    qr: Dcmqrscp
    studies: Studies


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pacs]:
    """Orthanc and dcmqrscp, both loaded with the same studies and told about EDGE."""
    root = tmp_path_factory.mktemp("pacs")
    prior = dicomgen.Study("DOE^JOHN", "P1", study_date="20260115", accession="A1")
    ct = dicomgen.write_series(root / "prior-ct", 150, study=prior)
    mr = dicomgen.write_series(root / "prior-mr", 50, study=prior, modality="MR")
    other = dicomgen.Study("SMITH^ANNA", "P2", study_date="20250301", accession="A2")
    third = dicomgen.Study("DOE^JANE", "P3", study_date="20260220", accession="A3")
    studies = Studies(
        ct + mr, prior.study_uid, str(dcmread(mr[0]).SeriesInstanceUID),
        dicomgen.write_series(root / "other", 3, study=other, modality="MR"),
        dicomgen.write_series(root / "third", 2, study=third),
    )
    orthanc = Orthanc(root / "orthanc", {"EDGE": ["EDGE", "127.0.0.1", AGENT_PORT]})
    qr = Dcmqrscp(root / "dcmqrscp", {"edge": ("EDGE", AGENT_PORT)})
    with orthanc, qr:
        for path in studies.everything:
            orthanc.rest("/instances", path.read_bytes())
        qr.load(studies.everything)
        yield Pacs(orthanc, qr, studies)


@pytest.fixture
def config_file(tmp_path: Path, pacs: Pacs) -> Path:
    """The agent on AGENT_PORT, knowing both PACSes (allowed to store: C-MOVE needs it)."""
    return write_config(
        tmp_path / "agent.toml",
        {"ae_title": "EDGE", "port": AGENT_PORT, "bind": "127.0.0.1",
         "data_dir": str(tmp_path / "data"), "min_free_mb": 0},
        {"PACS": peer(pacs.orthanc.ae_title, pacs.orthanc.port, ("echo", "store")),
         "QR": peer(pacs.qr.ae_title, pacs.qr.port, ("echo", "store"))},
    )


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, "--config", str(config), timeout=120)


def archived(config: Path) -> dict[str, Path]:
    """SOP Instance UID -> archived file, read from the index."""
    data = config_module.load_file(config).agent.data_dir
    conn = connect(Layout(data).index_path, readonly=True)
    try:
        rows = conn.execute("SELECT SOPInstanceUID, path FROM instances").fetchall()
    finally:
        conn.close()
    return {uid: data / path for uid, path in rows}


def same_data_sets(sent: list[Path], config: Path) -> None:
    """Every sent instance is archived with its data set byte for byte."""
    stored = archived(config)
    assert len(stored) == len(sent)
    for path in sent:
        uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        assert dicomgen.dataset_bytes(stored[uid]) == dicomgen.dataset_bytes(path)


# -- find ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["PACS", "QR"])
def test_find_studies_by_name_wildcard_prints_a_table(config_file: Path, pacs: Pacs,
                                                       name: str) -> None:
    found = cli(config_file, "find", name, "-k", "PatientName=DOE*")
    assert found.returncode == 0, found.stderr
    lines = found.stdout.splitlines()
    assert lines[0].split()[:3] == ["PatientName", "PatientID", "StudyDate"]
    rows = sorted(line.split()[0] for line in lines[1:-1])
    assert rows == ["DOE^JANE", "DOE^JOHN"]
    assert pacs.studies.prior_uid in found.stdout  # UIDs are printed whole
    assert lines[-1].startswith("2 matches from") and "Study Root, STUDY level" in lines[-1]
    assert "success (0x0000)" in lines[-1]


@pytest.mark.parametrize("name", ["PACS", "QR"])
def test_find_a_date_range_as_dicom_json(config_file: Path, pacs: Pacs, name: str) -> None:
    found = cli(config_file, "find", name, "--json", "-k", "StudyDate=20260101-",
                "-k", "AccessionNumber")
    assert found.returncode == 0, found.stderr
    answers = json.loads(found.stdout)
    accessions = sorted(a["00080050"]["Value"][0] for a in answers)
    assert accessions == ["A1", "A3"]
    assert all(a["00080052"]["Value"] == ["STUDY"] for a in answers)
    assert all(a["0020000D"]["vr"] == "UI" for a in answers)


@pytest.mark.parametrize("name", ["PACS", "QR"])
def test_find_series_and_images_of_a_study(config_file: Path, pacs: Pacs, name: str) -> None:
    study = f"StudyInstanceUID={pacs.studies.prior_uid}"
    series = cli(config_file, "find", name, "-L", "SERIES", "-k", study, "--json")
    assert series.returncode == 0, series.stderr
    assert sorted(a["00080060"]["Value"][0] for a in json.loads(series.stdout)) == ["CT", "MR"]
    images = cli(config_file, "find", name, "-L", "IMAGE", "--json", "-k", study,
                 "-k", f"SeriesInstanceUID={pacs.studies.mr_series_uid}")
    assert images.returncode == 0, images.stderr
    assert len(json.loads(images.stdout)) == 50


def test_find_in_patient_root_and_patient_study_only(config_file: Path, pacs: Pacs) -> None:
    patients = cli(config_file, "find", "QR", "-P", "-k", "PatientName=DOE^J?H*")
    assert patients.returncode == 0, patients.stderr
    assert "Patient Root, PATIENT level" in patients.stdout
    assert [line.split()[0] for line in patients.stdout.splitlines()[1:-1]] == ["DOE^JOHN"]
    studies = cli(config_file, "find", "QR", "-O", "-L", "STUDY", "-k", "PatientID=P2", "--json")
    assert studies.returncode == 0, studies.stderr
    assert [a["00080050"]["Value"][0] for a in json.loads(studies.stdout)] == ["A2"]


def test_find_states_what_the_standard_requires_before_asking(config_file: Path) -> None:
    no_study = cli(config_file, "find", "QR", "-L", "SERIES")
    assert no_study.returncode == 2
    assert "-k StudyInstanceUID=VALUE" in no_study.stderr
    no_level = cli(config_file, "find", "QR", "-O", "-L", "SERIES", "-k", "PatientID=P1")
    assert no_level.returncode == 2 and "Patient/Study Only has no SERIES level" in no_level.stderr
    bad_key = cli(config_file, "find", "QR", "-k", "PatientNaem=X")
    assert bad_key.returncode == 2 and "'PatientNaem' is not a DICOM keyword" in bad_key.stderr


def test_a_failure_status_is_printed_in_words(tmp_path: Path) -> None:
    """Our own SCP as the strict peer: a series key in a study query is 0xA900."""
    edge = write_config(tmp_path / "edge.toml",
                        {"ae_title": "EDGE", "port": 0, "bind": "127.0.0.1",
                         "data_dir": str(tmp_path / "edge"), "min_free_mb": 0},
                        {"ASKER": peer("ASKER", allow=("find",))})
    with Agent(config_module.load_file(edge)) as running:
        asker = write_config(tmp_path / "asker.toml",
                             {"ae_title": "ASKER", "data_dir": str(tmp_path / "asker")},
                             {"EDGE": peer("EDGE", running.status.snapshot().port or 0)})
        found = cli(asker, "find", "EDGE", "-k", "Modality=CT")
    assert found.returncode == 1
    last = found.stdout.splitlines()[-1]
    assert last.startswith("0 matches from EDGE")
    assert "Identifier Does Not Match SOP Class (0xA900)" in last
    assert "Modality" in last  # the peer's Error Comment


# -- retrieve ------------------------------------------------------------------------


def test_retrieve_by_move_into_the_running_agent_byte_identical(
    config_file: Path, pacs: Pacs, tmp_path: Path
) -> None:
    agent = AgentProcess(config_file, tmp_path / "data").start()
    try:
        pulled = cli(config_file, "retrieve", "PACS", "-k",
                     f"StudyInstanceUID={pacs.studies.prior_uid}", "--move")
        assert pulled.returncode == 0, pulled.stdout + pulled.stderr
        assert "200 instances retrieved" in pulled.stdout and "the running agent" in pulled.stdout
        same_data_sets(pacs.studies.prior, config_file)
        status = cli(config_file, "status")
        assert "1 patients, 1 studies, 2 series, 200 instances" in status.stdout
    finally:
        agent.stop()


def test_retrieve_by_get_with_the_agent_stopped(config_file: Path, pacs: Pacs) -> None:
    pulled = cli(config_file, "retrieve", "QR", "-k",
                 f"StudyInstanceUID={pacs.studies.prior_uid}", "--get")
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    assert "200 instances retrieved" in pulled.stdout and "by C-GET" in pulled.stdout
    same_data_sets(pacs.studies.prior, config_file)


def test_retrieve_by_move_starts_a_receiver_when_the_agent_is_stopped(
    config_file: Path, pacs: Pacs
) -> None:
    pulled = cli(config_file, "retrieve", "QR", "-k",
                 f"StudyInstanceUID={pacs.studies.prior_uid}",
                 "--series", pacs.studies.mr_series_uid)
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    assert "50 instances retrieved" in pulled.stdout and "temporary receiver" in pulled.stdout
    same_data_sets(pacs.studies.prior[150:], config_file)


def test_retrieved_instances_are_not_forwarded_back_but_send_to_pushes_them(
    tmp_path: Path, pacs: Pacs
) -> None:
    sink_port = free_port()
    config = write_config(
        tmp_path / "agent.toml",
        {"ae_title": "EDGE", "port": AGENT_PORT, "bind": "127.0.0.1",
         "data_dir": str(tmp_path / "data"), "min_free_mb": 0},
        {"PACS": peer(pacs.orthanc.ae_title, pacs.orthanc.port, ("echo", "store")),
         "SINK": peer("SINK", sink_port, ("echo",))},
    )
    with config.open("a") as handle:
        handle.write('\n[forward]\nto = ["PACS"]\n')
    out = tmp_path / "sink"
    out.mkdir()
    sink = subprocess.Popen([dcmtk("storescp"), "-aet", "SINK", "-od", str(out), str(sink_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    agent = AgentProcess(config, tmp_path / "data").start()
    try:
        pulled = cli(config, "retrieve", "PACS", "-k",
                     f"StudyInstanceUID={pacs.studies.prior_uid}",
                     "--series", pacs.studies.mr_series_uid, "--send-to", "SINK")
        assert pulled.returncode == 0, pulled.stdout + pulled.stderr
        assert "queued 50 instances for SINK" in pulled.stdout
        wait_until(lambda: len(list(out.iterdir())) == 50, 60, "the study to reach SINK")
        data = tmp_path / "data"
        conn = connect(Layout(data).index_path, readonly=True)
        try:
            destinations = dict(conn.execute(
                "SELECT destination, count(*) FROM forward_jobs GROUP BY destination"))
        finally:
            conn.close()
        assert destinations == {"SINK": 50}  # nothing queued back to the PACS it came from
    finally:
        agent.stop()
        sink.terminate()
        sink.wait(10)


def test_a_partial_failure_names_the_failed_instance(config_file: Path, pacs: Pacs) -> None:
    """One instance cannot be written (its path is taken by a directory): 0xA700 for it only."""
    victim = dcmread(pacs.studies.prior[160], stop_before_pixels=True)
    data = config_module.load_file(config_file).agent.data_dir
    blocked = (data / "archive" / victim.StudyInstanceUID / victim.SeriesInstanceUID /
               f"{victim.SOPInstanceUID}.dcm")
    blocked.mkdir(parents=True)
    pulled = cli(config_file, "retrieve", "QR", "-k",
                 f"StudyInstanceUID={pacs.studies.prior_uid}",
                 "--series", pacs.studies.mr_series_uid, "--get")
    assert pulled.returncode == 1
    assert "49 instances retrieved" in pulled.stdout and "1 failed" in pulled.stdout
    assert victim.SOPInstanceUID in pulled.stdout
    assert len(archived(config_file)) == 49


# -- the usual field mistakes --------------------------------------------------------


def test_an_unknown_peer_lists_the_known_ones(config_file: Path) -> None:
    found = cli(config_file, "find", "PASC")
    assert found.returncode == 2
    assert "'PASC' is neither a configured peer (PACS, QR)" in found.stderr


def test_a_wrong_called_ae_title_is_named(config_file: Path, pacs: Pacs) -> None:
    found = cli(config_file, "find", f"NOTDCMQR@127.0.0.1:{pacs.qr.port}")
    assert found.returncode == 1
    assert "called AE title not recognised" in found.stderr


def test_a_rejection_that_beats_pynetdicom_to_its_socket_check_is_still_named(
        config_file: Path, pacs: Pacs) -> None:
    # pynetdicom checks its socket only after EVT_REQUESTED: holding that handler lets
    # dcmqrscp's reject and hang-up arrive first, as a loaded machine does by chance
    config = config_module.load_file(config_file)
    target = Target("NOTDCMQR", "127.0.0.1", pacs.qr.port, "NOTDCMQR")
    requestor = Requestor(config, 10)
    ae = requestor.ae()
    ae.add_requested_context(VERIFICATION)
    closed = threading.Event()
    slow = [(evt.EVT_REQUESTED, lambda event: closed.wait(2)),
            (evt.EVT_CONN_CLOSE, lambda event: closed.set())]
    with pytest.raises(PeerError, match="rejected permanently: called AE title not recog"):
        requestor.associate(ae, target, extra_handlers=slow)
    assert closed.is_set()


def test_an_unknown_calling_ae_title_is_named(tmp_path: Path, config_file: Path) -> None:
    """The agent itself as the peer: it knows PACS and QR, not STRANGER."""
    stranger = write_config(tmp_path / "stranger.toml",
                            {"ae_title": "STRANGER", "data_dir": str(tmp_path / "s")}, {})
    with Agent(config_module.load_file(config_file)):
        found = cli(stranger, "find", f"EDGE@127.0.0.1:{AGENT_PORT}")
    assert found.returncode == 1
    assert "calling AE title not recognised" in found.stderr


def test_a_pacs_that_does_not_know_us_as_destination_gives_a801(
    tmp_path: Path, pacs: Pacs
) -> None:
    config = write_config(
        tmp_path / "agent.toml",
        {"ae_title": "EDGE2", "port": free_port(), "bind": "127.0.0.1",
         "data_dir": str(tmp_path / "data"), "min_free_mb": 0},
        {"QR": peer(pacs.qr.ae_title, pacs.qr.port, ("echo", "store"))},
    )
    pulled = cli(config, "retrieve", "QR", "-k", f"StudyInstanceUID={pacs.studies.prior_uid}")
    assert pulled.returncode == 1
    assert "0xA801" in pulled.stdout and "move destination" in pulled.stdout.lower()
    assert "or use --get" in pulled.stdout


class StrictOrthanc(Orthanc):
    """Orthanc as shipped: no request from an AE title missing in DicomModalities."""

    def command(self) -> list[str]:
        command = super().command()
        path = Path(command[-1])
        settings = json.loads(path.read_text())
        for key in [k for k in settings if k.startswith("DicomAlwaysAllow")]:
            del settings[key]
        path.write_text(json.dumps(settings))
        return command


@pytest.mark.parametrize("method", ["--move", "--get"])
def test_a_pacs_that_does_not_know_us_says_it_refused_not_that_it_timed_out(
        tmp_path: Path, pacs: Pacs, method: str) -> None:
    # Orthanc ends the association at the C-MOVE (C-GET) of an AE title it does not know
    with StrictOrthanc(tmp_path / "orthanc") as strict:
        strict.rest("/instances", pacs.studies.third[0].read_bytes())
        config = write_config(
            tmp_path / "agent.toml",
            {"ae_title": "EDGE", "port": free_port(), "bind": "127.0.0.1",
             "data_dir": str(tmp_path / "data"), "min_free_mb": 0},
            {"PACS": peer(strict.ae_title, strict.port, ("echo", "store"))})
        study = str(dcmread(pacs.studies.third[0], stop_before_pixels=True).StudyInstanceUID)
        pulled = cli(config, "retrieve", "PACS", method, "-k", f"StudyInstanceUID={study}")
    assert pulled.returncode == 1
    assert "within 60 s" not in pulled.stderr, pulled.stderr
    assert "the peer ended the association" in pulled.stderr, pulled.stderr
    assert "it refused the request" in pulled.stderr
    assert "add EDGE (with this box's address and port)" in pulled.stderr


def test_a_silent_retrieve_is_told_apart_from_a_refusal() -> None:
    from pydicom import Dataset

    from agent.qr.retrieve import Waiting, _follow

    target = Target("PACS", "127.0.0.1", 104, "PACS")
    times = iter([100.0, 160.0])  # the request, then the empty answer 60 s later
    waiting = Waiting(target, "move", 60.0, "EDGE", clock=lambda: next(times))
    with pytest.raises(PeerError, match=r"no answer to the C-MOVE within 60 s \(after 0 "):
        _follow(iter([(Dataset(), None)]), waiting, lambda progress: None)


def test_a_move_from_a_peer_we_would_refuse_is_stopped_early(tmp_path: Path, pacs: Pacs) -> None:
    config = write_config(
        tmp_path / "agent.toml",
        {"ae_title": "EDGE", "port": AGENT_PORT, "data_dir": str(tmp_path / "data")},
        {"QR": peer(pacs.qr.ae_title, pacs.qr.port, ("echo",))},
    )
    pulled = cli(config, "retrieve", "QR", "-k", f"StudyInstanceUID={pacs.studies.prior_uid}")
    assert pulled.returncode == 2
    assert "'store' in peers.QR.allow" in pulled.stderr


def test_a_silent_peer_times_out_with_the_reason(config_file: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        accepted: list[socket.socket] = []
        stop = threading.Event()

        def accept() -> None:
            listener.settimeout(0.2)
            while not stop.is_set():
                try:
                    accepted.append(listener.accept()[0])
                except TimeoutError:
                    continue

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        try:
            port = listener.getsockname()[1]
            found = cli(config_file, "find", f"SILENT@127.0.0.1:{port}", "--timeout", "1")
        finally:
            stop.set()
            thread.join(5)
            for conn in accepted:
                conn.close()
    assert found.returncode == 1
    assert "accepts connections but gave no association answer within" in found.stderr


def test_nothing_listening_is_said_plainly(config_file: Path) -> None:
    found = cli(config_file, "find", f"GONE@127.0.0.1:{free_port()}", "--timeout", "2")
    assert found.returncode == 1
    assert "connection refused: nothing listens on" in found.stderr
