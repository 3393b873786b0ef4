"""C-MOVE and C-GET with DCMTK movescu, getscu and storescp, and pynetdicom."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dicomgen
import pytest
from pydicom import dcmread
from pynetdicom import AE, build_context

from agent import config as config_module
from agent.app import Agent
from tests import scu
from tests.qr_archive import STUDY_ROOT_MOVE
from tests.qr_archive import identifier as q
from tests.support import dcmtk, free_port, peer, storescp, write_config


class Setup:
    """An agent holding one 200-instance series; WS may move and get, DEST receives."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.destination_port = free_port()
        self.picky_port = free_port()  # PICKY: a destination that rejects our association
        self.sent = dicomgen.write_series(root / "series", 200, size=64)
        header = dcmread(self.sent[0], stop_before_pixels=True)
        self.study_uid = str(header.StudyInstanceUID)
        self.series_uid = str(header.SeriesInstanceUID)
        self.config = config_module.load_file(write_config(
            root / "agent.toml",
            {"port": free_port(), "bind": "127.0.0.1", "data_dir": str(root / "data"),
             "min_free_mb": 0},
            {"CT": peer("MODALITY", allow=("store",)),
             "WS": peer("WS", allow=("echo", "move", "get")),
             "VIEWER": peer("VIEWER", allow=("find",)),
             "DEST": peer("DEST", self.destination_port),
             "PICKY": peer("PICKY", self.picky_port)}))

    def keys(self) -> list[str]:
        """findscu-style keys naming the series."""
        return ["-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={self.study_uid}",
                "-k", f"SeriesInstanceUID={self.series_uid}"]

    def movescu(self, calling: str, destination: str, flag: str = "-S",
                keys: list[str] | None = None) -> subprocess.CompletedProcess[str]:
        """DCMTK movescu (of the series by default), as ``calling``, to ``destination``."""
        return subprocess.run([dcmtk("movescu"), "-aet", calling, "-aec", "EDGE", "-aem",
                               destination, flag, *(keys or self.keys()), "127.0.0.1",
                               str(self.config.agent.port)],
                              capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Setup, Agent]]:
    prepared = Setup(tmp_path_factory.mktemp("retrieve"))
    with Agent(prepared.config) as agent:
        assert scu.store(prepared.config.agent.port, prepared.sent) == [0] * 200
        yield prepared, agent


def same_instances(sent: list[Path], received: list[Path]) -> None:
    """The received files carry the sent data sets, byte for byte."""
    by_uid = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in received}
    assert len(by_uid) == len(sent)
    for path in sent:
        uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        assert dicomgen.dataset_bytes(by_uid[uid]) == dicomgen.dataset_bytes(path)


@pytest.mark.parametrize(("flag", "level"), [("-S", "SERIES"), ("-P", "STUDY"), ("-O", "STUDY")])
def test_movescu_moves_a_200_instance_series_byte_identical(
        setup: tuple[Setup, Agent], tmp_path: Path, flag: str, level: str) -> None:
    prepared, _agent = setup
    target = tmp_path / "moved"
    keys = prepared.keys() if level == "SERIES" else [
        "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=EDGE0001",
        "-k", f"StudyInstanceUID={prepared.study_uid}"]
    destination = storescp(target, prepared.destination_port)
    try:
        result = prepared.movescu("WS", "DEST", flag, keys)
    finally:
        destination.terminate()
        destination.wait(10)
    assert result.returncode == 0, result.stderr
    same_instances(prepared.sent, sorted(target.iterdir()))


def test_getscu_gets_a_200_instance_series_byte_identical(setup: tuple[Setup, Agent]) -> None:
    prepared, _agent = setup
    target = prepared.root / "got"
    target.mkdir()
    result = subprocess.run([dcmtk("getscu"), "-aet", "WS", "-aec", "EDGE", "-S", "-od",
                             str(target), *prepared.keys(), "127.0.0.1",
                             str(prepared.config.agent.port)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    same_instances(prepared.sent, sorted(target.iterdir()))


@pytest.mark.parametrize(("flag", "keys"), [
    ("-P", ["QueryRetrieveLevel=PATIENT", "PatientID=EDGE0001"]),
    ("-P", ["QueryRetrieveLevel=STUDY", "PatientID=EDGE0001", "StudyInstanceUID={study}"]),
    ("-O", ["QueryRetrieveLevel=STUDY", "PatientID=EDGE0001", "StudyInstanceUID={study}"]),
    ("-O", ["QueryRetrieveLevel=PATIENT", "PatientID=EDGE0001"]),
])
def test_getscu_in_the_other_models(setup: tuple[Setup, Agent], tmp_path: Path, flag: str,
                                    keys: list[str]) -> None:
    prepared, _agent = setup
    arguments = [a for key in keys for a in ("-k", key.format(study=prepared.study_uid))]
    result = subprocess.run([dcmtk("getscu"), "-aet", "WS", "-aec", "EDGE", flag, "-od",
                             str(tmp_path), *arguments, "127.0.0.1",
                             str(prepared.config.agent.port)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    same_instances(prepared.sent, sorted(tmp_path.iterdir()))


def test_an_unknown_move_destination_is_a801(setup: tuple[Setup, Agent]) -> None:
    prepared, _agent = setup
    result = prepared.movescu("WS", "NOBODY")
    assert "MoveDestinationUnknown" in result.stdout + result.stderr


def test_a_configured_destination_not_listening_is_a702_with_every_instance_failed(
        setup: tuple[Setup, Agent], caplog: pytest.LogCaptureFixture) -> None:
    # DEST is configured but nothing listens on its port: known, so not 0xA801 (PS3.4
    # C.4.2.1.4) but "unable to perform sub-operations", with the failed UIDs
    prepared, _agent = setup
    with caplog.at_level(logging.WARNING, logger="agent.net.qr"):
        result = prepared.movescu("WS", "DEST", "-S", ["-d", *prepared.keys()])
    said = result.stdout + result.stderr
    assert "DIMSE Status                  : 0xa702" in said, said[-3000:]
    assert "Failed Suboperations          : 200" in said
    assert "Completed Suboperations       : 0" in said
    assert ",200 FailedSOPInstanceUIDList" in said
    [line] = [r.getMessage() for r in caplog.records if "cannot reach" in r.getMessage()]
    assert f"DEST@127.0.0.1:{prepared.destination_port}" in line, line
    assert "connection refused" in line and "200 instances not sent" in line


def test_a_destination_that_rejects_the_association_is_a702_and_says_why(
        setup: tuple[Setup, Agent], caplog: pytest.LogCaptureFixture) -> None:
    prepared, _agent = setup
    picky = AE(ae_title="SOMEONE")  # answers only to "SOMEONE": PICKY is rejected
    picky.require_called_aet = True
    picky.add_supported_context(dicomgen.SOP_CLASSES["CT"])
    server = picky.start_server(("127.0.0.1", prepared.picky_port), block=False)
    try:
        with caplog.at_level(logging.WARNING, logger="agent.net.qr"):
            result = prepared.movescu("WS", "PICKY", "-S", ["-d", *prepared.keys()])
    finally:
        server.shutdown()
    said = result.stdout + result.stderr
    assert "DIMSE Status                  : 0xa702" in said, said[-3000:]
    assert "Failed Suboperations          : 200" in said
    [line] = [r.getMessage() for r in caplog.records if "cannot reach" in r.getMessage()]
    assert f"PICKY@127.0.0.1:{prepared.picky_port}" in line, line
    assert "association rejected permanently: called AE title not recognised" in line


def test_a_peer_without_move_permission_cannot_move(setup: tuple[Setup, Agent]) -> None:
    prepared, _agent = setup
    result = prepared.movescu("VIEWER", "DEST")
    # movescu's FIND context is accepted, its MOVE context is not; it exits 0 regardless
    assert "No valid Presentation Context" in result.stderr


def test_a_partial_failure_ends_b000_with_the_failed_uids(setup: tuple[Setup, Agent],
                                                           tmp_path: Path) -> None:
    prepared, _agent = setup
    elsewhere = dicomgen.Study(patient_id="ELSEWHERE")
    [victim] = dicomgen.write_series(tmp_path / "victim", 1, size=8, study=elsewhere)
    [other] = dicomgen.write_series(tmp_path / "other", 1, size=8, study=elsewhere)
    header = dcmread(victim, stop_before_pixels=True)
    other_ds = dcmread(other)
    other_ds.StudyInstanceUID = header.StudyInstanceUID
    other_ds.SeriesInstanceUID = header.SeriesInstanceUID
    other_ds.save_as(other)
    assert scu.store(prepared.config.agent.port, [victim, other]) == [0, 0]
    archived = next((prepared.root / "data" / "archive").rglob(f"{header.SOPInstanceUID}.dcm"))
    archived.unlink()  # the file is gone, the index still names it
    destination = storescp(tmp_path / "dest", prepared.destination_port)
    try:
        requestor = AE(ae_title="WS")
        requestor.requested_contexts = [build_context(STUDY_ROOT_MOVE)]
        assoc = requestor.associate("127.0.0.1", prepared.config.agent.port, ae_title="EDGE")
        responses = list(assoc.send_c_move(
            q("SERIES", StudyInstanceUID=str(header.StudyInstanceUID),
              SeriesInstanceUID=str(header.SeriesInstanceUID)), "DEST", STUDY_ROOT_MOVE))
        assoc.release()
    finally:
        destination.terminate()
        destination.wait(10)
    status, final = responses[-1]
    assert status.Status == 0xB000
    assert status.NumberOfCompletedSuboperations == 1
    assert status.NumberOfFailedSuboperations == 1
    assert final.FailedSOPInstanceUIDList == header.SOPInstanceUID
