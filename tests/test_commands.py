"""The edge-agent command line, run as a real process."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import dicomgen

from agent.app import Agent
from tests.support import (
    AgentProcess,
    agent_env,
    dcmtk,
    free_port,
    peer,
    run_cli,
    write_config,
)
from tests.test_storage import assert_identical


def workstation_config(tmp_path: Path, ae_title: str, agent_port: int) -> Path:
    """A config for the CLI itself, whose AE is ``ae_title`` and which knows the agent."""
    return write_config(
        tmp_path / f"cli-{ae_title}.toml",
        {"ae_title": ae_title, "data_dir": str(tmp_path / "cli-data")},
        {"EDGE": peer("EDGE", agent_port)},
    )


def test_a_bad_config_exits_2_with_one_line_naming_the_key(tmp_path: Path) -> None:
    bad = write_config(tmp_path / "bad.toml", {"port": 70000}, {})
    result = run_cli("check-config", "--config", str(bad))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "edge-agent: agent.port: a port is 0-65535, not 70000"]
    assert "Traceback" not in result.stderr


def test_run_with_a_bad_config_exits_2_without_a_traceback(tmp_path: Path) -> None:
    bad = write_config(tmp_path / "bad.toml", {"ae_title": "X" * 17}, {})
    result = run_cli("run", "--config", str(bad))
    assert result.returncode == 2
    assert "agent.ae_title" in result.stderr and "Traceback" not in result.stderr


def test_check_config_summarises_a_good_file(config_file: Path) -> None:
    result = run_cli("check-config", "--config", str(config_file))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK ")
    assert "peer CT: MODALITY@127.0.0.1" in result.stdout


def test_the_config_is_found_through_the_environment(config_file: Path) -> None:
    env = agent_env()
    env["EDGE_AGENT_CONFIG"] = str(config_file)
    result = run_cli("check-config", env=env)
    assert result.returncode == 0, result.stderr
    assert str(config_file) in result.stdout


def test_echo_a_configured_peer_and_an_address(agent: Agent, tmp_path: Path) -> None:
    port = agent.server.port  # type: ignore[union-attr]
    config = workstation_config(tmp_path, "MODALITY", port)
    by_name = run_cli("echo", "EDGE", "--config", str(config))
    assert by_name.returncode == 0, by_name.stderr
    assert by_name.stdout.startswith("OK EDGE (EDGE@127.0.0.1:")
    by_address = run_cli("echo", f"EDGE@127.0.0.1:{port}", "--config", str(config))
    assert by_address.returncode == 0, by_address.stderr


def test_echo_says_why_it_failed(agent: Agent, tmp_path: Path) -> None:
    port = agent.server.port  # type: ignore[union-attr]
    stranger = workstation_config(tmp_path, "STRANGER", port)
    rejected = run_cli("echo", "EDGE", "--config", str(stranger))
    assert rejected.returncode == 1
    assert "calling AE title not recognised" in rejected.stderr
    wrong_called = run_cli("echo", f"WRONG@127.0.0.1:{port}", "--config", str(stranger))
    assert "called AE title not recognised" in wrong_called.stderr
    nobody = run_cli("echo", f"EDGE@127.0.0.1:{free_port()}", "--config", str(stranger))
    assert nobody.returncode == 1
    assert len(nobody.stderr.strip().splitlines()) == 1
    unknown = run_cli("echo", "NOSUCHPEER", "--config", str(stranger))
    assert unknown.returncode == 2
    assert "neither a configured peer" in unknown.stderr


def test_dcmtk_echoscu_is_admitted_only_as_a_known_peer(agent: Agent) -> None:
    port = str(agent.server.port)  # type: ignore[union-attr]
    known = subprocess.run([dcmtk("echoscu"), "-aet", "MODALITY", "-aec", "EDGE",
                            "127.0.0.1", port], capture_output=True, timeout=30)
    stranger = subprocess.run([dcmtk("echoscu"), "-aet", "STRANGER", "-aec", "EDGE",
                               "127.0.0.1", port], capture_output=True, timeout=30)
    assert known.returncode == 0
    assert stranger.returncode != 0


def status_json(config_file: Path) -> dict[str, object]:
    """`edge-agent status --json` as a dict."""
    result = run_cli("status", "--json", "--config", str(config_file))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_storescu_to_edge_agent_run_is_counted_by_status(
        agent_process: AgentProcess, config_file: Path, tmp_path: Path, data_dir: Path) -> None:
    assert status_json(config_file)["running"] is False
    agent_process.start()
    sent = dicomgen.write_series(tmp_path / "study", 12)
    port = str(json.loads((data_dir / "run/status.json").read_text())["port"])
    result = subprocess.run([dcmtk("storescu"), "-aet", "MODALITY", "-aec", "EDGE", "+sd",
                             "127.0.0.1", port, str(tmp_path / "study")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    status = status_json(config_file)
    assert status["running"] is True
    assert status["agent"]["state"] == "serving"  # type: ignore[index]
    assert status["archive"]["instances"] == 12  # type: ignore[index]
    assert_identical(sent, data_dir)
    human = run_cli("status", "--config", str(config_file)).stdout
    assert "12 instances" in human and "serving" in human
    assert agent_process.stop() == 0
    assert status_json(config_file)["running"] is False


def test_reindex_refuses_while_the_agent_runs(agent_process: AgentProcess,
                                              config_file: Path) -> None:
    agent_process.start()
    busy = run_cli("reindex", "--config", str(config_file))
    assert busy.returncode == 1
    assert "in use by pid" in busy.stderr
    agent_process.stop()
    assert run_cli("reindex", "--config", str(config_file)).returncode == 0


def test_version_and_missing_subcommand() -> None:
    assert run_cli("--version").stdout.startswith("edge-agent ")
    assert run_cli().returncode == 2
