"""systemd integration: the notify protocol spoken to a socket the test binds, the
watchdog fed only while the agent works, SIGHUP reloads, and the unit file verified."""

from __future__ import annotations

import logging
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent import config as config_module
from agent import reconfigure
from agent.app import Agent
from agent.field.box import BoxAgent
from agent.field.systemd import Notifier
from agent.status import State
from tests.support import (
    REPO,
    AgentProcess,
    dcmtk,
    free_port,
    peer,
    wait_until,
    write_config,
)

Message = dict[str, str]


class NotifyListener:
    """The service manager's end: a datagram socket that collects sd_notify messages.

    When READY=1 arrives it checks at once whether ``probe_port`` accepts connections,
    so a test can tell that readiness was not announced before the listener was up.
    """

    def __init__(self, address: str, probe_port: int | None = None) -> None:
        self.address = address
        self.probe_port = probe_port
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.messages: queue.Queue[Message] = queue.Queue()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:
                return
            message = dict(line.split("=", 1) for line in data.decode().split("\n"))
            if message.get("READY") == "1" and self.probe_port is not None:
                message["port_open"] = str(self._port_open())
            self.messages.put(message)

    def _port_open(self) -> bool:
        assert self.probe_port is not None
        try:
            socket.create_connection(("127.0.0.1", self.probe_port), timeout=2).close()
        except OSError:
            return False
        return True

    def expect(self, wanted: Callable[[Message], bool], timeout: float = 20.0) -> list[Message]:
        """Messages up to and including the first one ``wanted`` accepts."""
        seen: list[Message] = []
        while True:
            try:
                message = self.messages.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no such message within {timeout} s; saw {seen}") from None
            seen.append(message)
            if wanted(message):
                return seen

    def close(self) -> None:
        self.sock.close()


def has(field: str, value: str | None = None) -> Callable[[Message], bool]:
    """A message carrying ``field`` (with ``value``, if given)."""
    return lambda m: field in m and (value is None or m[field] == value)


@pytest.fixture
def listener() -> Iterator[NotifyListener]:
    """A notify socket in the abstract namespace (no path length limit, nothing left over)."""
    bound = NotifyListener(f"@edge-agent-test-{uuid.uuid4().hex}")
    try:
        yield bound
    finally:
        bound.close()


def echo(port: int, calling_ae: str) -> int:
    """DCMTK's echoscu against the agent: its exit status (0: C-ECHO succeeded)."""
    command = [dcmtk("echoscu"), "-aet", calling_ae, "-aec", "EDGE", "127.0.0.1", str(port)]
    return subprocess.run(command, capture_output=True, timeout=30).returncode


# --- the protocol -------------------------------------------------------------------


def test_without_notify_socket_every_call_is_a_quiet_no_op(
    caplog: pytest.LogCaptureFixture,
) -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.send("READY=1") is False
    notifier.ready("serving")
    notifier.watchdog()
    notifier.stopping()
    assert caplog.records == []


def test_fields_go_out_in_one_datagram(listener: NotifyListener) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": listener.address})
    notifier.ready("serving on 127.0.0.1:104\nwith a newline")
    assert listener.expect(has("READY")) == [
        {"READY": "1", "STATUS": "serving on 127.0.0.1:104 with a newline"}
    ]
    notifier.reloading()
    reloading = listener.expect(has("RELOADING"))[0]
    assert int(reloading["MONOTONIC_USEC"]) > 0
    notifier.stopping()
    assert listener.expect(has("STOPPING")) == [{"STOPPING": "1", "STATUS": "stopping"}]


def test_a_path_socket_works_too(tmp_path: Path) -> None:
    short = Path("/tmp") / f"edge-notify-{uuid.uuid4().hex[:8]}"
    bound = NotifyListener(str(short))
    try:
        Notifier({"NOTIFY_SOCKET": str(short)}).status("hello")
        assert bound.expect(has("STATUS")) == [{"STATUS": "hello"}]
    finally:
        bound.close()
        short.unlink()


def test_watchdog_pings_only_when_the_watchdog_is_ours(listener: NotifyListener) -> None:
    assert Notifier({"NOTIFY_SOCKET": listener.address}).watchdog_interval is None
    other_pid = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert Notifier({"NOTIFY_SOCKET": listener.address, **other_pid}).watchdog_interval is None
    ours = Notifier(
        {
            "NOTIFY_SOCKET": listener.address,
            "WATCHDOG_USEC": "30000000",
            "WATCHDOG_PID": str(os.getpid()),
        }
    )
    assert ours.watchdog_interval == 30.0
    Notifier({"NOTIFY_SOCKET": listener.address}).watchdog()  # no interval: nothing sent
    ours.watchdog()
    assert listener.expect(lambda m: True) == [{"WATCHDOG": "1"}]


def test_a_failing_socket_is_reported_once_then_its_recovery(
    caplog: pytest.LogCaptureFixture,
) -> None:
    address = f"@edge-agent-test-{uuid.uuid4().hex}"
    notifier = Notifier({"NOTIFY_SOCKET": address})
    caplog.set_level(logging.INFO, "agent.field.systemd")
    assert notifier.send("STATUS=a") is False
    assert notifier.send("STATUS=b") is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "cannot notify systemd" in warnings[0].getMessage()
    bound = NotifyListener(address)
    try:
        assert notifier.send("STATUS=c") is True
        assert bound.expect(has("STATUS")) == [{"STATUS": "c"}]
        assert caplog.records[-1].getMessage() == "notifying systemd works again"
    finally:
        bound.close()


def test_a_malformed_notify_socket_is_ignored_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert not Notifier({"NOTIFY_SOCKET": "relative/path"}).enabled
    assert "neither a path nor @abstract" in caplog.text


# --- the running agent, as systemd sees it --------------------------------------------


def make_config(path: Path, port: int, data_dir: Path, **peers: dict[str, object]) -> Path:
    agent = {"ae_title": "EDGE", "port": port, "bind": "127.0.0.1",
             "data_dir": str(data_dir), "min_free_mb": 0}
    return write_config(path, agent, peers)


def test_the_service_lifecycle_over_the_notify_socket(tmp_path: Path) -> None:
    port = free_port()
    listener = NotifyListener(f"@edge-agent-test-{uuid.uuid4().hex}", probe_port=port)
    config = make_config(tmp_path / "agent.toml", port, tmp_path / "data",
                         CT=peer("MODALITY", allow=("echo", "store")))
    env = {"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "2000000"}
    process = AgentProcess(config, tmp_path / "data", env=env)
    try:
        process.start()
        *before, ready = listener.expect(has("READY"))
        assert all(set(m) == {"STATUS"} for m in before), "only STATUS lines before READY"
        assert ready["port_open"] == "True"
        assert ready["STATUS"].startswith(f"serving on 127.0.0.1:{port}, 0 received")
        listener.expect(has("WATCHDOG"))
        listener.expect(has("WATCHDOG"))

        # SIGHUP: a new peer is let in without a restart; a changed port waits for one
        assert echo(port, "NEWWS") != 0
        make_config(config, free_port(), tmp_path / "data",
                    CT=peer("MODALITY"), WS=peer("NEWWS", allow=("echo",)))
        assert process.proc is not None
        process.proc.send_signal(signal.SIGHUP)
        listener.expect(has("RELOADING"))
        listener.expect(has("READY"))
        assert echo(port, "NEWWS") == 0
        wait_until(lambda: "wait for a restart: agent.port" in process.log.read_text(), 10,
                   "the restart note")

        # a broken file is refused and the agent keeps serving what it had
        config.write_text("[agent\nport = 'x'\n")
        process.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload refused" in process.log.read_text(), 10, "the refusal")
        assert echo(port, "NEWWS") == 0
        assert process.proc.poll() is None

        assert process.stop() == 0
        stopping = listener.expect(has("STOPPING"))
        assert all("RELOADING" not in m for m in stopping), "a refused reload is no reload"
    finally:
        process.stop()
        listener.close()


def test_watchdog_stops_when_the_listener_dies(
    tmp_path: Path, listener: NotifyListener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", listener.address)
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    config = make_config(tmp_path / "agent.toml", 0, tmp_path / "data")
    agent = BoxAgent(config_module.load_file(config))
    agent.start()
    try:
        listener.expect(has("WATCHDOG"))
        assert agent.server is not None and agent.server._server is not None
        agent.server._server.socket.close()  # what a crashed listener looks like
        wait_until(lambda: agent.status.snapshot().state is State.FAILED, 10,
                   "the agent to notice")  # the fault LED lights
        assert agent.status.snapshot().last_error == "the DICOM listener is not serving"
        # datagrams arrive in order: pings sent before it noticed come before this one
        listener.expect(lambda m: m.get("STATUS", "").startswith("failed on 127.0.0.1:"))
        with pytest.raises(AssertionError, match="no such message"):
            listener.expect(has("WATCHDOG"), timeout=3)
    finally:
        agent.close()


# --- what a reload may change ---------------------------------------------------------


def test_reload_applies_peers_live_and_keeps_listener_settings(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = make_config(tmp_path / "agent.toml", 0, data, CT=peer("MODALITY"))
    with Agent(config_module.load_file(config)) as agent:
        assert agent.server is not None
        port = agent.server.port
        changed = make_config(tmp_path / "new.toml", 4242, data,
                              CT=peer("MODALITY", allow=("echo",)),
                              PACS=peer("PACS", port=4243, allow=("echo",)))
        text = changed.read_text().replace("[agent]", "[agent]\nlog_level = 'warning'")
        text += "\n[forward]\nto = ['PACS']\n"
        changed.write_text(text)
        later = agent.reload(config_module.load_file(changed))
        assert later == ["agent.port"]
        assert agent.config.agent.port == 0  # kept until the restart
        assert agent.config.peers["CT"].allow == frozenset({"echo"})
        assert logging.getLogger().level == logging.WARNING
        assert agent.forwarder is not None and agent.forwarder.running()
        assert echo(port, "PACS") == 0
    logging.getLogger().setLevel(logging.INFO)


def test_split_keeps_every_restart_only_setting() -> None:
    running = config_module.parse({"agent": {"ae_title": "EDGE", "port": 104}})
    new = config_module.parse(
        {
            "agent": {"ae_title": "OTHER", "port": 105, "min_free_mb": 5},
            "leds": {"heartbeat": 17},
            "console": {"device": "/dev/ttyGS0"},
        }
    )
    effective, later = reconfigure.split(running, new)
    assert later == ["agent.ae_title", "agent.port", "console.device", "leds.heartbeat"]
    assert effective.agent.ae_title == "EDGE" and effective.agent.port == 104
    assert effective.agent.min_free_mb == 5
    assert effective.leds == running.leds and effective.console == running.console
    assert reconfigure.changed_keys(running, effective) == ["agent.min_free_mb"]


# --- the unit file --------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_unit_file_verifies_clean(tmp_path: Path) -> None:
    unit = (REPO / "systemd" / "edge-agent.service").read_text()
    settings = [line.split("=", 1)[0] for line in unit.splitlines() if "=" in line]
    assert "PrivateDevices" not in settings  # it would hide /dev/gpiochip* and the UART
    assert {"Type", "WatchdogSec", "ExecReload", "SupplementaryGroups"} <= set(settings)
    # verify checks that ExecStart exists: point it at this checkout's entry point
    entry = shutil.which("edge-agent") or str(Path(sys.executable).parent / "edge-agent")
    assert Path(entry).exists(), "pip install -e . puts edge-agent beside python"
    local = tmp_path / "edge-agent.service"
    local.write_text(unit.replace("/opt/edge-agent/venv/bin/edge-agent", entry))
    result = subprocess.run(["systemd-analyze", "verify", str(local)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == "", result.stderr
