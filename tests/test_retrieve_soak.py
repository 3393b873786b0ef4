"""Retrieval back to back, as a workstation reading a day's studies would: 20 C-MOVEs and
20 C-GETs of a 300-instance study, every instance arriving each time, none stalling.

Guards the engine's queues and wake-ups (a missed wake-up shows as a stall that the
suite's timeout turns into a failure) and the files-as-stored path under repetition.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import dicomgen
import pytest
from pydicom import dcmread

from agent import config as config_module
from agent.app import Agent
from tests import scu
from tests.support import dcmtk, free_port, peer, wait_until, write_config

ROUNDS = 20
INSTANCES = 300


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int, str, Path]]:
    root = tmp_path_factory.mktemp("soak")
    destination = free_port()
    config = config_module.load_file(write_config(
        root / "agent.toml",
        {"port": free_port(), "bind": "127.0.0.1", "data_dir": str(root / "data"),
         "min_free_mb": 0},
        {"CT": peer("MODALITY", allow=("store",)), "WS": peer("WS", allow=("move", "get")),
         "DEST": peer("DEST", destination)}))
    files = dicomgen.write_series(root / "src", INSTANCES, size=32)
    with Agent(config) as _agent:
        assert scu.store(config.agent.port, files) == [0] * INSTANCES
        study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        yield config.agent.port, destination, study_uid, root


def _keys(study_uid: str) -> list[str]:
    return ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}"]


@pytest.mark.slow
def test_twenty_c_moves_back_to_back_deliver_every_instance(
        study: tuple[int, int, str, Path], tmp_path: Path) -> None:
    port, destination, study_uid, _root = study
    received = tmp_path / "dest"
    received.mkdir()
    storescp = subprocess.Popen([dcmtk("storescp"), "-aet", "DEST", "-od", str(received),
                                 str(destination)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    echo = [dcmtk("echoscu"), "-aec", "DEST", "127.0.0.1", str(destination)]
    try:
        wait_until(lambda: subprocess.run(echo, capture_output=True).returncode == 0, 20,
                   "storescp to listen")
        for round_ in range(ROUNDS):
            result = subprocess.run([dcmtk("movescu"), "-aet", "WS", "-aec", "EDGE", "-aem",
                                     "DEST", "-S", *_keys(study_uid), "127.0.0.1", str(port)],
                                    capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, f"round {round_}: {result.stderr}"
            files = list(received.iterdir())
            assert len(files) == INSTANCES, f"round {round_}: {len(files)} arrived"
            for path in files:
                path.unlink()
    finally:
        storescp.terminate()
        storescp.wait(10)


@pytest.mark.slow
def test_twenty_c_gets_back_to_back_deliver_every_instance(
        study: tuple[int, int, str, Path], tmp_path: Path) -> None:
    port, _destination, study_uid, _root = study
    for round_ in range(ROUNDS):
        target = tmp_path / f"got{round_}"
        target.mkdir()
        result = subprocess.run([dcmtk("getscu"), "-aet", "WS", "-aec", "EDGE", "-S", "-od",
                                 str(target), *_keys(study_uid), "127.0.0.1", str(port)],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"round {round_}: {result.stderr}"
        assert len(list(target.iterdir())) == INSTANCES, f"round {round_}"
