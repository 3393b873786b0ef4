"""The forwarding process: started when there is somewhere to forward, replaced when it
dies or hangs, stopped with the agent, and reporting through the agent's status and log."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from pathlib import Path

import dicomgen
import pytest
from bench.peers import Orthanc

from agent import config as config_module
from agent.app import Agent
from agent.forward import process as forward_process
from tests import scu
from tests.support import AgentProcess, free_port, peer, wait_until, write_config
from tests.test_forward import ScriptedSCP, forward_config, jobs, published_down


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def link_threads() -> int:
    """Threads carrying a pipe to a forwarding process (two per live one)."""
    return sum(t.name.startswith("forward-link") for t in threading.enumerate())


def child_pid(agent: Agent) -> int:
    assert agent.forwarder is not None
    pid = agent.forwarder.pid()
    assert pid is not None and pid != os.getpid()
    return pid


def test_no_destination_no_process(tmp_path: Path) -> None:
    path = write_config(tmp_path / "agent.toml",
                        {"port": 0, "data_dir": str(tmp_path / "data")}, {})
    with Agent(config_module.load_file(path)) as agent:
        assert agent.forwarder is not None and agent.forwarder.pid() is None
        assert agent.status.snapshot().forwarder_pid is None


def test_the_process_reports_into_the_agents_status_and_log(
        orthanc: Orthanc, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    config = config_module.load_file(forward_config(
        tmp_path, {"PACS": ("ORTHANC", orthanc.port)}, ["PACS"]))
    sent = dicomgen.write_series(tmp_path / "study", 10, size=32)
    with Agent(config) as agent:
        pid = child_pid(agent)
        wait_until(lambda: agent.status.snapshot().forwarder_pid == pid, 30,
                   "the process to answer and show in the status")
        assert scu.store(config.agent.port, sent) == [0] * 10
        wait_until(lambda: agent.status.snapshot().forwarded == 10, 60, "10 forwarded")
        wait_until(lambda: any(r.process == pid and "forwarding to PACS" in r.getMessage()
                               for r in caplog.records), 10, "the process's log line")
    assert orthanc.count() == 10
    assert not alive(pid)


def forwarding_problem(agent: Agent) -> str | None:
    """The forwarding part's current problem in the status model, if any."""
    found = [p.message for p in agent.status.snapshot().problems if p.part == "forwarding"]
    return found[0] if found else None


def test_a_killed_process_is_replaced_and_nothing_is_lost(
        orthanc: Orthanc, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = config_module.load_file(forward_config(
        tmp_path, {"PACS": ("ORTHANC", orthanc.port)}, ["PACS"]))
    first = dicomgen.write_series(tmp_path / "first", 10, size=32)
    second = dicomgen.write_series(tmp_path / "second", 10, size=32)
    with Agent(config) as agent:
        assert scu.store(config.agent.port, first) == [0] * 10
        wait_until(lambda: orthanc.count() == 10, 60, "the first 10 at the PACS")
        killed = child_pid(agent)
        os.kill(killed, signal.SIGKILL)
        assert scu.store(config.agent.port, second) == [0] * 10  # queued while it is down
        wait_until(lambda: orthanc.count() == 20, 60, "the second 10 at the PACS")
        assert child_pid(agent) != killed
        assert any("forwarding process ended" in r.getMessage() for r in caplog.records)
        wait_until(lambda: agent.status.snapshot().forwarder_pid == child_pid(agent), 30,
                   "the new process to answer")
        assert forwarding_problem(agent) is None  # it recovered: the problem is over
        wait_until(lambda: link_threads() == 2, 10, "the dead process's pipe threads to end")
    assert set(jobs(tmp_path / "data").values()) == {"done"}


def test_a_hung_process_is_killed_and_replaced(orthanc: Orthanc, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(forward_process, "STUCK_AFTER", 2.0)
    monkeypatch.setattr(forward_process, "RESPAWN_GAP", 0.0)
    config = config_module.load_file(forward_config(
        tmp_path, {"PACS": ("ORTHANC", orthanc.port)}, ["PACS"]))
    sent = dicomgen.write_series(tmp_path / "study", 10, size=32)
    with Agent(config) as agent:
        hung = child_pid(agent)
        os.kill(hung, signal.SIGSTOP)
        assert scu.store(config.agent.port, sent) == [0] * 10
        wait_until(lambda: orthanc.count() == 10, 60, "the PACS to get everything")
        assert not alive(hung)
        assert any("did not answer" in r.getMessage() for r in caplog.records)
        wait_until(lambda: link_threads() == 2, 10, "the hung process's pipe threads to end")


def test_sigterm_stops_the_agent_and_a_busy_forwarding_process(tmp_path: Path) -> None:
    dead = {"DEAD": ("DEAD", free_port()), "GONE": ("GONE", free_port())}
    config_file = forward_config(tmp_path, dead, ["DEAD", "GONE"])
    port = config_module.load_file(config_file).agent.port
    agent = AgentProcess(config_file, tmp_path / "data")
    status = tmp_path / "data" / "run" / "status.json"
    try:
        agent.start()
        assert scu.store(port, dicomgen.write_series(tmp_path / "study", 20, size=32)) == [0] * 20
        wait_until(lambda: published_down(tmp_path / "data", "DEAD", "GONE"), 30,
                   "both destinations down, their senders waiting to probe")
        wait_until(lambda: json.loads(status.read_text())["forwarder_pid"], 30,
                   "the forwarding process in the published status")
        pid = json.loads(status.read_text())["forwarder_pid"]
        assert alive(pid)
    finally:
        code = agent.stop()
    assert code == 0
    wait_until(lambda: not alive(pid), 10, "the forwarding process to be gone")
    final = json.loads(status.read_text())
    assert final["state"] == "stopped" and final["forwarder_pid"] is None
    assert "did not stop" not in agent.log.read_text()


def test_jobs_for_a_peer_that_is_no_destination_start_the_process(
        orthanc: Orthanc, tmp_path: Path) -> None:
    peers = {"CT": peer("MODALITY", allow=("store",)),
             "PACS": peer("ORTHANC", orthanc.port, allow=("echo",))}
    path = write_config(tmp_path / "agent.toml",
                        {"port": free_port(), "bind": "127.0.0.1",
                         "data_dir": str(tmp_path / "data"), "min_free_mb": 0}, peers)
    config = config_module.load_file(path)
    sent = dicomgen.write_series(tmp_path / "study", 5, size=32)
    with Agent(config) as agent:
        assert scu.store(config.agent.port, sent) == [0] * 5
        assert agent.forwarder is not None and agent.forwarder.pid() is None
        assert agent.archive is not None
        with agent.archive.index.reading() as conn:
            uids = [row[0] for row in conn.execute("SELECT SOPInstanceUID FROM instances")]
        agent.archive.outbox.send_again(uids, "PACS", 0.0)  # what `retrieve --send-to` does
        wait_until(lambda: orthanc.count() == 5, 60, "the queued jobs at the PACS")


def test_each_job_goes_once_over_one_of_several_associations(tmp_path: Path) -> None:
    pacs = ScriptedSCP([])  # every C-STORE answered Success
    path = forward_config(tmp_path, {"PACS": ("SCRIPTED", pacs.port)}, ["PACS"])
    path.write_text(path.read_text() + "associations = 3\n")
    config = config_module.load_file(path)
    sent = dicomgen.write_series(tmp_path / "study", 60, size=32)
    try:
        with Agent(config):
            assert scu.store(config.agent.port, sent) == [0] * 60
            wait_until(lambda: set(jobs(tmp_path / "data").values()) == {"done"}, 60,
                       "every job done")
    finally:
        pacs.close()
    assert len(pacs.received) == 60 and len(set(pacs.received)) == 60  # each once, none twice
    assert len(set(pacs.associations)) >= 3  # every lane carried some
