"""Stopping: within the unit's TimeoutStopSec, and saying which thread did not stop."""

from __future__ import annotations

import logging
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dicomgen
import pytest
from pydicom import dcmread
from pynetdicom import AE, AllStoragePresentationContexts, evt

from agent import app, threads
from agent import config as config_module
from agent.field import leds
from agent.field.console import transport
from agent.forward import process
from agent.net import scp
from tests import scu
from tests.support import REPO, AgentProcess, dcmtk, free_port, peer, wait_until, write_config
from tests.test_forward import forward_config, published_down

UNIT = (REPO / "systemd" / "edge-agent.service").read_text()
TIMEOUT_STOP = float(re.search(r"^TimeoutStopSec=(\d+)", UNIT, re.M).group(1))  # type: ignore[union-attr]


def stop_within_bound(agent: AgentProcess) -> tuple[int, float]:
    """SIGTERM the agent; its exit code and seconds taken, failing past TimeoutStopSec."""
    assert agent.proc is not None
    started = time.monotonic()
    agent.proc.send_signal(signal.SIGTERM)
    code = agent.proc.wait(TIMEOUT_STOP)  # the hard bound: systemd kills after this
    return code, time.monotonic() - started


def test_a_join_that_times_out_names_the_thread(caplog: pytest.LogCaptureFixture) -> None:
    release = threading.Event()
    stuck = threading.Thread(target=release.wait, name="stuck-for-the-test", daemon=True)
    stuck.start()
    try:
        assert threads.join(stuck, 0.05) is False
        assert "thread 'stuck-for-the-test' did not stop" in caplog.text
    finally:
        release.set()
    assert threads.join(stuck, 10) is True
    assert threads.join(None, 0) and threads.join(threading.current_thread(), 0)


def test_the_worst_stop_fits_in_timeout_stop_sec_with_margin() -> None:
    # Agent.close waits for each part in turn, but the forwarding process is asked to stop
    # first and its deadline runs while the associations finish
    listener = scp.GRACE + scp.LISTENER_STOPS_WITHIN + scp.ABORTED_END_WITHIN
    worst = (transport.JOIN_TIMEOUT + max(listener, process.STOPS_WITHIN) + 2.0
             + app.HOUSEKEEPER_STOPS_WITHIN + leds.JOIN_TIMEOUT)
    assert worst + 10 <= TIMEOUT_STOP, f"worst stop {worst} s, TimeoutStopSec {TIMEOUT_STOP}"


class SilentSCP:
    """A Storage SCP that takes the association and a C-STORE but never answers it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received = threading.Event()
        self.release = threading.Event()
        ae = AE(ae_title="SILENT")
        ae.supported_contexts = AllStoragePresentationContexts
        ae.network_timeout = ae.dimse_timeout = 300
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self.on_store)])

    def on_store(self, event: Any) -> int:
        """Note the C-STORE and hold it unanswered until the test ends."""
        self.received.set()
        self.release.wait(120)
        return 0x0000

    def close(self) -> None:
        """Let the held C-STORE go and stop listening."""
        self.release.set()
        self.server.shutdown()


@pytest.fixture
def silent() -> Iterator[SilentSCP]:
    """A SilentSCP, closed after the test."""
    scp_ = SilentSCP()
    try:
        yield scp_
    finally:
        scp_.close()


@pytest.mark.slow
def test_sigterm_with_forwarding_busy_on_two_destinations_stops_in_time(
        tmp_path: Path, silent: SilentSCP, caplog: pytest.LogCaptureFixture) -> None:
    destinations = {"DEAD": ("DEAD", free_port()), "SILENT": ("SILENT", silent.port)}
    config_file = forward_config(tmp_path, destinations, ["DEAD", "SILENT"])
    port = config_module.load_file(config_file).agent.port
    agent = AgentProcess(config_file, tmp_path / "data")
    agent.start()
    try:
        sent = dicomgen.write_series(tmp_path / "study", 10, size=32)
        assert scu.store(port, sent) == [0] * 10
        assert silent.received.wait(60), "the silent SCP never got a C-STORE"
        wait_until(lambda: published_down(tmp_path / "data", "DEAD"), 30, "DEAD down")
        code, took = stop_within_bound(agent)
    finally:
        agent.kill()
    logging.getLogger(__name__).warning("edge-agent run stopped in %.1f s", took)
    log = agent.log.read_text()
    assert code == 0, log
    assert took < TIMEOUT_STOP
    # the sender to SILENT waits for an answer (DIMSE timeout 60 s) beyond its deadline
    assert "thread 'forward-SILENT-0' did not stop within 10.0 s" in log
    assert "thread 'forward-DEAD" not in log  # it was only waiting to retry
    assert log.count("forwarding process started") == 1  # none started while stopping
    assert "killing it" not in log  # it left by itself, its stuck thread behind
    assert "Traceback" not in log


@pytest.mark.slow
def test_sigterm_during_a_c_move_to_a_silent_destination_stops_in_time(
        tmp_path: Path, silent: SilentSCP) -> None:
    # the C-MOVE handler waits for the destination's answer (DIMSE timeout 60 s): stopping
    # aborts the association, which ends that wait at once, and the agent exits
    config_file = write_config(
        tmp_path / "agent.toml",
        {"port": free_port(), "bind": "127.0.0.1", "data_dir": str(tmp_path / "data"),
         "min_free_mb": 0},
        {"CT": peer("MODALITY", allow=("store",)), "WS": peer("WS", allow=("move",)),
         "SILENT": peer("SILENT", silent.port, allow=())})
    port = config_module.load_file(config_file).agent.port
    agent = AgentProcess(config_file, tmp_path / "data")
    agent.start()
    sent = dicomgen.write_series(tmp_path / "study", 3, size=32)
    study = str(dcmread(sent[0], stop_before_pixels=True).StudyInstanceUID)
    mover = None
    try:
        assert scu.store(port, sent) == [0] * 3
        mover = subprocess.Popen(
            [dcmtk("movescu"), "-aet", "WS", "-aec", "EDGE", "-aem", "SILENT", "-S", "-k",
             "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}", "127.0.0.1",
             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert silent.received.wait(60), "the C-MOVE never reached its destination"
        code, took = stop_within_bound(agent)
    finally:
        agent.kill()
        if mover is not None:
            mover.kill()
            mover.wait(10)
    logging.getLogger(__name__).warning("edge-agent run stopped in %.1f s", took)
    log = agent.log.read_text()
    assert code == 0, log
    # the abort ends the wait for SILENT's answer at once: the handler ends, naming it
    assert "was aborted but its handler goes on" not in log
    assert re.search(rf"C-STORE of instance [0-9.]+ to SILENT at 127.0.0.1:{silent.port} failed:"
                     " the association was aborted here before it answered", log), log
