"""The published status carries its time: a hung agent reads as not answering, from
another process (``edge-agent status``) as on the console; and it is published as it
changes, not a tick later."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import dicomgen
import pytest

from agent import app
from agent import config as config_module
from agent.app import Agent
from agent.archive import Layout
from agent.forward import retention
from agent.ops import status as status_ops
from agent.status import STUCK_AFTER, Snapshot, State, StatusModel
from agent.status_file import publish, read_published
from tests import scu
from tests.support import REPO, AgentProcess, run_cli, wait_until

T0 = 1_800_000_000.0  # an epoch time to write files at


def test_a_fresh_file_reads_as_written(tmp_path: Path) -> None:
    publish(Snapshot(state=State.SERVING, received=3), tmp_path, now=T0)
    data = read_published(tmp_path, now=T0 + STUCK_AFTER - 1)
    assert data is not None
    assert data["state"] == "serving" and data["silent_for"] is None
    assert data["received"] == 3 and data["written_at"].startswith("2027-01-15T08:00:00")


def test_a_file_older_than_stuck_after_reads_as_not_answering(tmp_path: Path) -> None:
    publish(Snapshot(state=State.SERVING, received=3), tmp_path, now=T0)
    data = read_published(tmp_path, now=T0 + STUCK_AFTER + 5)
    assert data is not None
    assert data["state"] == "failed"
    assert data["silent_for"] == pytest.approx(STUCK_AFTER + 5, abs=0.01)
    assert data["last_error"].startswith("not answering")
    assert data["received"] == 3  # the rest is what the agent last said


@pytest.mark.parametrize("state", [State.STARTING, State.STOPPING, State.FAILED])
def test_every_live_state_ages(tmp_path: Path, state: State) -> None:
    publish(Snapshot(state=state), tmp_path, now=T0)
    data = read_published(tmp_path, now=T0 + STUCK_AFTER + 1)
    assert data is not None and data["silent_for"] is not None


def test_a_stopped_agents_file_never_ages(tmp_path: Path) -> None:
    publish(Snapshot(state=State.STOPPED), tmp_path, now=T0)
    data = read_published(tmp_path, now=T0 + 86400)
    assert data is not None and data["state"] == "stopped" and data["silent_for"] is None


def test_a_file_without_a_time_or_from_the_future_is_not_judged(tmp_path: Path) -> None:
    publish(Snapshot(state=State.SERVING), tmp_path, now=T0)
    assert read_published(tmp_path, now=T0 - 3600)["state"] == "serving"  # type: ignore[index]
    older = tmp_path / "status.json"
    data = json.loads(older.read_text())
    del data["written_at"]
    older.write_text(json.dumps(data))
    assert read_published(tmp_path, now=T0 + 86400)["state"] == "serving"  # type: ignore[index]


def test_the_live_model_reads_as_not_answering_on_the_console(tmp_path: Path) -> None:
    model = StatusModel()
    model.set_state(State.SERVING)
    model.beat(at=time.monotonic() - STUCK_AFTER - 2)
    snapshot = model.snapshot()
    assert snapshot.state is State.FAILED and snapshot.silent_for is not None
    layout = Layout(tmp_path / "data")
    info = status_ops.gather(layout, live=snapshot)
    assert info["running"] is True and info["answering"] is False
    text = "\n".join(status_ops.status_report(layout, snapshot).lines())
    assert "agent     not answering on" in text
    assert "\nerror     agent: not answering: nothing heard from the agent for" in text
    model.beat()
    assert status_ops.gather(layout, live=model.snapshot())["answering"] is True


def test_the_threshold_outlasts_the_longest_honest_silence_and_precedes_the_watchdog() -> None:
    unit = (REPO / "systemd" / "edge-agent.service").read_text()
    watchdog = float(re.search(r"^WatchdogSec=(\d+)", unit, re.M).group(1))  # type: ignore[union-attr]
    assert app.REFRESH_EVERY + app.TICK + retention.BUDGET < STUCK_AFTER < watchdog


def test_a_change_is_published_without_waiting_for_a_tick(
        config_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a tick a minute long: only publishing as the model changes can show these in time
    monkeypatch.setattr(app, "TICK", 60.0)
    monkeypatch.setattr(app, "REFRESH_EVERY", 600.0)
    config = config_module.load_file(config_file)
    sent = dicomgen.write_series(tmp_path / "study", 6, size=32)
    with Agent(config) as agent:
        run_dir = agent.layout.run_dir
        wait_until(lambda: _published(run_dir).get("state") == "serving", 20, "serving")
        assert scu.store(config.agent.port, sent) == [0] * 6
        wait_until(lambda: _published(run_dir).get("received") == 6, 20,
                   "the six instances in the published status")


def _published(run_dir: Path) -> dict[str, Any]:
    """What a reader in another process sees now ({} for no file)."""
    return read_published(run_dir) or {}


def _status(config_file: Path) -> tuple[dict[str, Any], str]:
    """``edge-agent status --json`` and ``edge-agent status``, run as processes."""
    as_json = run_cli("status", "--json", "--config", str(config_file))
    human = run_cli("status", "--config", str(config_file))
    assert as_json.returncode == 0 and human.returncode == 0, as_json.stderr + human.stderr
    return json.loads(as_json.stdout), human.stdout


@pytest.mark.slow
def test_a_stopped_process_reads_as_not_answering_then_serving_again(
        agent_process: AgentProcess, config_file: Path, data_dir: Path) -> None:
    agent_process.start()
    assert agent_process.proc is not None
    pid = agent_process.proc.pid
    run_dir = data_dir / "run"
    info, human = _status(config_file)
    assert info["answering"] is True and info["agent"]["state"] == "serving"
    os.kill(pid, signal.SIGSTOP)  # hung: alive, but nothing of it runs
    try:
        wait_until(lambda: _published(run_dir).get("silent_for"), STUCK_AFTER + 30,
                   "the published status to age")
        info, human = _status(config_file)
        assert info["running"] is True and info["answering"] is False
        assert info["agent"]["state"] == "failed" and info["agent"]["pid"] == pid
        assert info["agent"]["silent_for"] > STUCK_AFTER
        assert [line for line in human.splitlines() if line.startswith("agent")] == [
            f"agent     not answering on {info['agent']['listening']} (pid {pid}, "
            f"since {info['agent']['started_at']})"]
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_until(lambda: _published(run_dir).get("state") == "serving", 30,
               "the agent to publish again")
    info, human = _status(config_file)
    assert info["answering"] is True and info["agent"]["state"] == "serving"
    assert "not answering" not in human
    assert agent_process.stop() == 0


def test_status_shows_commitment_both_ways(tmp_path: Path) -> None:
    model = StatusModel()
    model.set_state(State.SERVING)
    model.owed_reports(2, 5)
    model.destination_commitments({"PACS": {"awaiting": 3, "requested": 4, "failed": 1}})
    snapshot = model.snapshot()
    assert (snapshot.commit_awaiting, snapshot.commit_failed) == (7, 1)
    lines = status_ops.status_report(Layout(tmp_path / "data"), snapshot).lines()
    assert "commit    to modalities: 2 transactions await their report, 5 reported" in lines
    assert "commit    from destinations: 7 instances await commitment, 1 not committed" in lines


def test_a_problem_names_its_part_and_time_and_ends_when_that_part_recovers(
        tmp_path: Path) -> None:
    model = StatusModel()
    model.set_state(State.SERVING)
    model.refused("0xA700 out of space")
    model.error("reload refused: agent.port: a port is 0-65535", part="configuration")
    model.forward_failed("PACS", "connection refused")
    snapshot = model.snapshot()
    assert [(p.part, p.message) for p in snapshot.problems] == [
        ("receiving", "0xA700 out of space"),
        ("configuration", "reload refused: agent.port: a port is 0-65535")]
    assert all(re.match(r"\d{4}-\d\d-\d\dT", p.at) for p in snapshot.problems)
    text = status_ops.status_report(Layout(tmp_path), snapshot).lines()
    at = snapshot.problems[0].at
    errors = [line for line in text if line.startswith("error")]  # then the alerts
    assert errors == [f"error     receiving: 0xA700 out of space (at {at})",
                      "error     configuration: reload refused: agent.port: a port is "
                      f"0-65535 (at {snapshot.problems[1].at})"]
    assert not any("last error" in line and "0xA700" in line for line in text)
    model.stored("stored", 10)  # receiving works again
    model.forwarded("PACS")  # and so does the PACS
    assert [p.part for p in model.snapshot().problems] == ["configuration"]
    assert model.snapshot().destinations[0].last_error is None
    model.recovered("configuration")
    assert model.snapshot().problems == () and model.snapshot().last_error is None
    assert not any(line.startswith("error")
                   for line in status_ops.status_report(Layout(tmp_path), model.snapshot())
                   .lines())


def test_a_re_sent_study_is_counted_as_duplicates(tmp_path: Path) -> None:
    from tests.support import free_port, peer, write_config

    config = config_module.load_file(write_config(
        tmp_path / "agent.toml", {"ae_title": "EDGE", "port": free_port(), "bind": "127.0.0.1",
                                  "data_dir": str(tmp_path / "data"), "min_free_mb": 0},
        {"CT": peer("MODALITY")}))
    sent = dicomgen.write_series(tmp_path / "study", 3, size=32)
    with Agent(config) as agent:
        assert scu.store(config.agent.port, sent) == [0] * 3
        assert scu.store(config.agent.port, sent) == [0] * 3  # the modality sends it again
        snapshot = agent.status.snapshot()
        lines = status_ops.status_report(agent.layout, snapshot).lines()
    assert snapshot.received == 3 and snapshot.duplicates == 3
    assert any(line.startswith("          3 received this run (and 3 duplicates of instances"
                               " already held), 0 refused") for line in lines)
    assert "3 received, 3 duplicates" in snapshot.summary()
