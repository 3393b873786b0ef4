"""The edge-agent command line, run as a real process."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import dicomgen
import pytest

from agent.app import Agent
from tests.support import (
    AgentProcess,
    agent_env,
    dcmtk,
    free_port,
    peer,
    run_cli,
    wait_until,
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


def run_on(tmp_path: Path, port: int, data_dir: Path) -> subprocess.CompletedProcess[str]:
    """`edge-agent run` on ``port`` with ``data_dir``, as a process that should not start."""
    config = write_config(tmp_path / f"run-{port}.toml",
                          {"ae_title": "EDGE", "port": port, "bind": "127.0.0.1",
                           "data_dir": str(data_dir)}, {})
    return run_cli("run", "--config", str(config), timeout=60)


def test_a_port_in_use_stops_run_with_one_line_naming_it_and_nothing_written(
        tmp_path: Path) -> None:
    import os
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        result = run_on(tmp_path, port, tmp_path / "data")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"edge-agent: agent.port: port {port} is already in use by process {os.getpid()} "
        f"({result.stderr.split(f'process {os.getpid()} (')[1].strip()}"]
    assert "python" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()  # nothing created, nothing recovered


def test_a_port_held_by_another_agent_names_that_agent_and_leaves_its_status_alone(
        agent_process: AgentProcess, config_file: Path, data_dir: Path,
        tmp_path: Path) -> None:
    agent_process.start()
    assert agent_process.proc is not None
    status_file = data_dir / "run" / "status.json"
    port = json.loads(status_file.read_text())["port"]
    result = run_on(tmp_path, port, data_dir)  # the same data directory, even
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip()
    assert line.startswith(f"edge-agent: agent.port: port {port} is already in use by "
                           f"another edge-agent (pid {agent_process.proc.pid}, "
                           f"data in {data_dir}, serving since ")
    assert "\n" not in line
    assert json.loads(status_file.read_text())["state"] == "serving"


def test_a_data_dir_that_cannot_be_made_stops_run_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    result = run_on(tmp_path, free_port(), tmp_path / "a-file" / "data")
    assert result.returncode == 2
    assert result.stderr.startswith("edge-agent: agent.data_dir: cannot create ")
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_check_config_reports_every_error_of_the_file_at_once(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[agent]\nport = 70000\nae_title = "EDGE"\nmax_pdu = "big"\n'
                   '[peers.PACS]\nae_title = "PACS"\nport = 104\n'
                   '[forward]\nto = ["NOWHERE"]\n')
    result = run_cli("check-config", "--config", str(bad))
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "edge-agent: 4 errors in the configuration:"
    assert [line.split(":")[0].strip() for line in lines[1:]] == [
        "agent.port", "agent.max_pdu", "peers.PACS.host", "forward.to"]


def tls_file(tmp_path: Path, key: Path, ca: Path, cert: Path) -> Path:
    config = write_config(tmp_path / "tls.toml",
                          {"ae_title": "EDGE", "port": free_port(),
                           "data_dir": str(tmp_path / "data")},
                          {"PACS": peer("PACS", 104)})
    with config.open("a") as out:
        out.write(f'\n[forward]\nto = ["PACS"]\n\n[tls]\ncertificate = "{cert}"\n'
                  f'private_key = "{key}"\nca = "{ca}"\nport = {free_port()}\n')
    return config


def test_check_config_says_ok_only_when_the_tls_files_work(tmp_path: Path) -> None:
    import shutil

    from tests.certs import make_pki

    pki = make_pki(tmp_path / "pki")
    key = tmp_path / "agent.key"
    subprocess.run(["openssl", "pkey", "-in", str(pki.agent.key), "-aes128", "-passout",
                    "pass:secret", "-out", str(key)], check=True, capture_output=True)
    missing = run_cli("check-config", "--config", str(tls_file(
        tmp_path, key, tmp_path / "no-ca.pem", tmp_path / "no-cert.pem")))
    assert missing.returncode == 2 and missing.stdout == ""
    assert missing.stderr.strip().splitlines() == [  # every file at fault, each named
        "edge-agent: 2 errors in the configuration:",
        f"  tls.certificate: {tmp_path / 'no-cert.pem'} does not exist",
        f"  tls.ca: {tmp_path / 'no-ca.pem'} does not exist"]
    encrypted = run_cli("check-config", "--config",
                        str(tls_file(tmp_path, key, pki.ca, pki.agent.cert)))
    assert encrypted.returncode == 2 and encrypted.stdout == ""
    assert f"tls.private_key: {key} is encrypted with a passphrase" in encrypted.stderr
    shutil.copy(pki.agent.key, key)
    key.chmod(0o644)
    readable = run_cli("check-config", "--config",
                       str(tls_file(tmp_path, key, pki.ca, pki.agent.cert)))
    assert readable.returncode == 0, readable.stderr
    lines = readable.stdout.splitlines()
    assert lines[0].startswith("OK ") and "  forward every instance to PACS" in lines
    assert lines[-1] == (f"WARNING tls.private_key: {key} can be read by other users "
                         "(mode 0644); chmod 600 it")
    key.chmod(0o600)
    private = run_cli("check-config", "--config",
                      str(tls_file(tmp_path, key, pki.ca, pki.agent.cert)))
    assert private.returncode == 0 and "WARNING" not in private.stdout


def other_agents(data_dir: Path) -> set[Path]:
    """Data directories of agents serving on this machine besides the test's own (a
    parallel run's): with them, status asks which one instead of picking."""
    from agent.archive import Layout
    from agent.ops.locate import serving
    from agent.procfs import running_agents

    return {d for _pid, d in running_agents() if serving(Layout(d))} - {data_dir}


def test_status_without_a_config_finds_the_running_agent_or_says_where_it_looked(
        agent_process: AgentProcess, data_dir: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    crowded = other_agents(data_dir)
    alone = run_cli("status", cwd=elsewhere)  # no --config, no $EDGE_AGENT_CONFIG
    crowded |= other_agents(data_dir)  # one that came up meanwhile was seen too
    assert alone.returncode == 0
    if not crowded:  # else another run's agent (this machine is shared) may be the one found
        assert alone.stdout.splitlines()[-2:] == [
            "agent     not running",
            "alert     critical EdgeAgentDown: the agent is not running: start it "
            "(systemctl start edge-agent)",
        ]
        assert alone.stdout.startswith(
            f"note      no configuration file; looked in {elsewhere / 'edge-data'} (the "
            "built-in default, relative to here), running processes, ")
    agent_process.start()
    assert agent_process.proc is not None
    crowded = other_agents(data_dir)
    report = json.loads(run_cli("status", "--json", cwd=elsewhere).stdout)
    crowded |= other_agents(data_dir)
    if crowded:  # it lists the candidates, or found ours alone if the others came and went
        assert f"pid {agent_process.proc.pid}" in report["note"]
    else:
        assert report["running"] is True and report["data_dir"] == str(data_dir)
        assert report["note"] == (f"no configuration file: found the agent (pid "
                                  f"{agent_process.proc.pid}) by its data directory's lock")


def test_locate_finds_an_agent_by_its_lock_or_by_the_systemd_unit(
        agent: Agent, config_file: Path, data_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.config import builtin_default
    from agent.ops.locate import locate

    wait_until(lambda: (data_dir / "run" / "status.json").exists(), 10, "the status file")
    monkeypatch.chdir(tmp_path)  # the built-in default's edge-data is here, and empty
    proc = tmp_path / "proc"  # /proc as it would be with this agent alone on the machine
    (proc / "4242" / "fd").mkdir(parents=True)
    (proc / "4242" / "fd" / "3").symlink_to(data_dir / "run" / "agent.lock")
    (proc / "4243" / "fd").mkdir(parents=True)  # a process holding nothing of ours
    by_lock = locate(builtin_default(), proc=proc, units=())
    assert by_lock.layout.root == data_dir
    assert by_lock.note == ("no configuration file: found the agent (pid 4242) by its data "
                            "directory's lock")
    unit = tmp_path / "edge-agent.service"
    unit.write_text(f"[Service]\nExecStart=/opt/edge-agent/venv/bin/edge-agent run --config "
                    f"{config_file}\n")
    by_unit = locate(builtin_default(), proc=tmp_path / "empty", units=(unit,))
    assert by_unit.layout.root == data_dir
    assert by_unit.note == f"no configuration file: found the agent by the systemd unit's " \
                           f"{config_file}"
    nowhere = locate(builtin_default(), proc=tmp_path / "empty", units=())
    assert nowhere.layout.root == tmp_path / "edge-data"
    assert nowhere.note is not None and nowhere.note.endswith(
        "running processes, no systemd unit installed: use --config")


def test_a_c_find_an_unknown_ae_may_not_make_is_logged_once_per_peer(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from agent import config as config_module
    from agent.net import peerlog

    config = config_module.load_file(write_config(
        tmp_path / "open.toml", {"ae_title": "EDGE", "port": free_port(), "bind": "127.0.0.1",
                                 "data_dir": str(tmp_path / "data"),
                                 "allow_unknown": ["echo", "store"]}, {}))
    peerlog.LIMITER.flush(everything=True)
    with Agent(config):
        for _ in range(2):
            found = subprocess.run([dcmtk("findscu"), "-S", "-aet", "STRANGER", "-aec", "EDGE",
                                    "-k", "QueryRetrieveLevel=STUDY", "127.0.0.1",
                                    str(config.agent.port)], capture_output=True, timeout=30)
            assert found.returncode != 0  # "no presentation context" at its end
    refused = [r.getMessage() for r in caplog.records
               if r.getMessage().startswith("refused C-FIND from STRANGER")]
    assert refused == ["refused C-FIND from STRANGER (unknown peer) at 127.0.0.1: not allowed "
                       "(its contexts not accepted)"]  # the second one is counted, not written
