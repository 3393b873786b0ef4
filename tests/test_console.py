"""The serial console, driven through pseudo-terminals as a field engineer's terminal would."""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import threading
import time
import tty
from collections.abc import Iterator
from pathlib import Path

import dicomgen
import pytest
from pynetdicom import AE

from agent import config as config_module
from agent.app import Agent
from agent.field.box import BoxAgent
from agent.field.console import PROMPT, SerialConsole
from agent.field.console import netinfo as netinfo_module
from agent.field.console.lineeditor import Cancel, Echo, LineEditor, Submit
from agent.field.settings import ConsoleSettings
from agent.ops.alerts import judge
from agent.status import STUCK_AFTER
from agent.status_parts import ClockState
from tests.commitment_peers import store
from tests.support import AgentProcess, free_port, peer, wait_until, write_config

VERIFICATION = "1.2.840.10008.1.1"
END = ("\r\n" + PROMPT).encode()


class Terminal:
    """The far end of a pty pair: what a terminal emulator types and sees."""

    def __init__(self, raw: bool = True) -> None:
        self.master, self.slave = os.openpty()
        if raw:
            tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.seen = b""
        self.closed = False

    def send(self, data: bytes) -> None:
        """Type bytes."""
        os.write(self.master, data)

    def read_until(self, marker: bytes, timeout: float = 20.0) -> bytes:
        """Everything up to and including ``marker``; fails the test after ``timeout``."""
        deadline = time.monotonic() + timeout
        while marker not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {marker!r} within {timeout} s; saw {self.seen!r}")
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                self.seen += os.read(self.master, 4096)
        cut = self.seen.index(marker) + len(marker)
        taken, self.seen = self.seen[:cut], self.seen[cut:]
        return taken

    def command(self, line: str, timeout: float = 30.0) -> list[str]:
        """Type a line and Enter; the answer's lines (the echo of the line left out)."""
        self.send(line.encode() + b"\r")
        text = self.read_until(END, timeout)[: -len(END)].decode()
        echoed, _, answer = text.partition("\r\n")
        assert echoed == line
        return answer.split("\r\n")

    def close(self) -> None:
        """Hang up: close both ends."""
        if not self.closed:
            self.closed = True
            for fd in (self.master, self.slave):
                with contextlib.suppress(OSError):
                    os.close(fd)


def echo_agent(port: int, calling_ae: str) -> int:
    """C-ECHO the agent as ``calling_ae``; the status, or -1 without an association."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate("127.0.0.1", port, ae_title="EDGE")
    if not assoc.is_established:
        return -1
    try:
        status = assoc.send_c_echo()
        return int(status.Status) if status and "Status" in status else -1
    finally:
        assoc.release()


@pytest.fixture
def terminal() -> Iterator[Terminal]:
    """A pty pair; the console gets the slave's path."""
    term = Terminal()
    try:
        yield term
    finally:
        term.close()


@pytest.fixture
def console_config(tmp_path: Path, terminal: Terminal) -> Path:
    """An agent config with a comment, one modality peer and the console on the pty."""
    path = write_config(
        tmp_path / "agent.toml",
        {"ae_title": "EDGE", "port": free_port(), "bind": "127.0.0.1",
         "data_dir": str(tmp_path / "data"), "min_free_mb": 0,
         "allow_unknown": ["echo", "find"]},
        {"CT": peer("MODALITY", allow=("echo", "store")),
         "SELF": peer("NOTEDGE", port=1)},
    )
    text = "# edge-agent for the test bench\n" + path.read_text()
    path.write_text(text + f'\n[console]\ndevice = "{terminal.path}"\nbaud = 115200\n')
    return path


@pytest.fixture
def restarts() -> threading.Event:
    """Set when the console asks for a restart."""
    return threading.Event()


@pytest.fixture
def running(console_config: Path, terminal: Terminal, restarts: threading.Event) -> Iterator[Agent]:
    """The agent in this process with its console on the pty, prompt seen."""
    agent = BoxAgent(config_module.load_file(console_config), on_restart=restarts.set)
    agent.start()
    try:
        terminal.read_until(PROMPT.encode())
        yield agent
    finally:
        agent.close()


def agent_port(agent: Agent) -> int:
    """The port the running agent listens on."""
    assert agent.server is not None
    return int(agent.server.port)


# -- line editing ------------------------------------------------------------------------


def test_the_line_editor_alone() -> None:
    editor = LineEditor(max_length=5)
    assert editor.feed(b"ab\x7fc\r\n") == [Echo(b"ab\b \bc\r\n"), Submit("ac")]
    assert editor.feed(b"x\x15y\x03") == [Echo(b"x\b \by^C\r\n"), Cancel()]
    assert editor.feed(b"\xff\x01\x1b[Aok\xc3\xa9\n") == [Echo("oké\r\n".encode()), Submit("oké")]
    assert editor.feed(b"123456\r") == [Echo(b"12345\x07\r\n"), Submit("12345")]
    assert editor.feed(b"a b\x17\r") == [Echo(b"a b\b \b\r\n"), Submit("a ")]


def test_echo_backspace_and_line_endings(running: Agent, terminal: Terminal) -> None:
    terminal.send(b"verx\x08sion\r")
    assert terminal.read_until(b"\r\n") == b"verx\b \bsion\r\n"
    assert terminal.read_until(END).startswith(b"OK edge-agent")
    terminal.send(b"version\r\n")
    terminal.read_until(END)
    terminal.send(b"version\n")
    terminal.read_until(END)
    terminal.send(b"peers\x7f\x7f\x7f\x7f\x7fversion\r")
    assert terminal.read_until(END).startswith(b"peers" + b"\b \b" * 5 + b"version\r\nOK edge")
    terminal.send(b"\r")  # the CRLF above must not have left a stray empty line behind
    assert terminal.read_until(PROMPT.encode()) == b"\r\n" + PROMPT.encode()


def test_ctrl_u_ctrl_c_and_empty_lines(
    running: Agent, terminal: Terminal, restarts: threading.Event
) -> None:
    terminal.send(b"restart yes\x15version\r")
    assert terminal.read_until(END).startswith(
        b"restart yes" + b"\b \b" * 11 + b"version\r\nOK edge-agent")
    terminal.send(b"restart yes\x03")
    assert terminal.read_until(PROMPT.encode()) == b"restart yes^C\r\n" + PROMPT.encode()
    terminal.send(b"\r\n\r   \r")
    for _ in range(3):
        assert terminal.read_until(PROMPT.encode()).lstrip(b" ") == b"\r\n" + PROMPT.encode()
    assert not restarts.is_set()
    terminal.send(b"\x01\x02\xff\xfeversion\r")  # control bytes and invalid UTF-8 dropped
    assert terminal.read_until(END).startswith(b"version\r\nOK edge-agent")


# -- commands ----------------------------------------------------------------------------

EVERY_COMMAND = [
    "help", "help config", "status", "peers", "echo CT", "queue", "queue retry all",
    "queue purge", "studies", "studies all", "net", "logs 5", "leds test", "version",
    "restart", "config show", "metrics",
    "clock", "prefetch P1",
    "config get agent.port", "config set agent.max_pdu 65536", "config unset agent.max_pdu",
    "config diff", "config revert", "config apply", "find", "retrieve", "commit",
    "commit NOPE --study 1.2", "bogus", "config", "preview CT /nonexistent.dcm",
]


def test_every_command_answers_ok_or_err(running: Agent, terminal: Terminal) -> None:
    assert running.console is not None
    table = running.console.table
    exercised = set()
    for line in EVERY_COMMAND:
        answer = terminal.command(line)
        first = answer[0]
        assert first == "OK" or first.startswith(("OK ", "ERR ")), (line, answer)
        assert all(body.startswith("  ") for body in answer[1:]), (line, answer)
        command = table.find(line.split())
        if command is not None:
            exercised.add(command.words)
    assert {c.words for c in table.commands} <= exercised


def test_help_lists_commands_and_bad_arguments_get_the_syntax(
    running: Agent, terminal: Terminal
) -> None:
    listing = terminal.command("help")
    assert listing[0] == "OK"
    assert any(line.strip().startswith("config set KEY VALUE...") for line in listing)
    assert terminal.command("echo") == ["ERR usage: echo PEER"]
    assert terminal.command("logs 1 2") == ["ERR usage: logs [N]"]
    assert terminal.command("frobnicate")[0].startswith("ERR unknown command 'frobnicate'")


def test_status_peers_version_logs_net(running: Agent, terminal: Terminal) -> None:
    status = terminal.command("status")
    assert status[0] == "OK serving"
    assert any("0 patients" in line for line in status)
    # the live model, not the file housekeeping publishes up to a second later
    assert any(line.startswith("  agent     serving on 127.0.0.1:") for line in status), status
    # the shipped alerts' judgements, as edge-agent status prints them
    names = [a.name for a in judge(running.status.snapshot().to_json(), time.time())]
    shown = [line.split()[2].rstrip(":") for line in status if line.startswith("  alert     ")]
    assert shown == names and (names or "  alerts    none" in status), status
    peers = terminal.command("peers")
    assert peers[0] == "OK 2 peers"
    assert any("CT" in line and "MODALITY@127.0.0.1:104 allow echo,store" in line
               for line in peers)
    version = terminal.command("version")
    assert version[0].startswith("OK edge-agent ") and "pynetdicom" in version[1]
    logs = terminal.command("logs 50")
    assert logs[0] == "OK" and any("unknown AEs may echo" in line for line in logs)
    net = terminal.command("net")
    assert net[0] == "OK" and any(line.strip().startswith("lo ") for line in net)


def test_clock_shows_the_agents_judgement(running: Agent, terminal: Terminal) -> None:
    wait_until(lambda: running.status.snapshot().clock != ClockState(), 20, "a clock tick")
    clock = running.status.snapshot().clock  # this machine's: synchronised or not
    answer = terminal.command("clock")
    assert answer[0] == f"OK {clock.doubt() or 'clock trusted'}"
    assert answer[1].startswith("  synchronised  ")
    assert answer[2:] == ["  plausible     yes",
                          f"  trusted       {'yes' if clock.trusted else 'no: age-based'}"
                          + ("" if clock.trusted else " retention waits, arrivals are flagged"),
                          "  last jump     none since the agent started"]


def test_status_of_an_agent_whose_housekeeping_stopped_reads_not_answering(
        running: Agent, terminal: Terminal) -> None:
    running._stop.set()  # housekeeping ends, as if hung: nothing beats any more
    running.status.nudge()
    assert running._housekeeper is not None
    running._housekeeper.join(10)
    assert not running._housekeeper.is_alive()
    running.status.beat(at=time.monotonic() - STUCK_AFTER - 1)
    status = terminal.command("status")
    assert status[0] == "OK not answering"
    assert any(line.startswith("  agent     not answering on 127.0.0.1:") for line in status)
    assert any(line.startswith("  error     agent: not answering: nothing heard")
               for line in status)


def test_queue_and_retry(running: Agent, terminal: Terminal) -> None:
    assert terminal.command("queue") == ["OK", "  queue empty: everything was delivered"]
    assert terminal.command("queue retry all") == ["OK re-armed 0 jobs"]
    assert terminal.command("queue retry x")[0].startswith("ERR usage")


def test_prefetch_by_hand_is_queued_and_listed(running: Agent, terminal: Terminal) -> None:
    assert terminal.command("prefetch P1")[0].startswith("ERR say where the priors are")
    assert terminal.command("prefetch P* SELF")[0].startswith("ERR give one patient ID")
    answer = terminal.command("prefetch P1 SELF")
    assert answer[0].startswith("OK prefetch #1 queued: priors from SELF"), answer
    listing = terminal.command("queue")
    assert any(line.startswith("  prefetch: ") for line in listing), listing
    assert any("#1" in line and "by hand <- SELF" in line for line in listing), listing
    assert not any("P1" in line for line in listing)  # the patient is not named


def test_studies_names_the_patient_at_the_console(running: Agent, terminal: Terminal) -> None:
    exam = dicomgen.Study()
    store(agent_port(running), list(dicomgen.series(2, study=exam, size=8)), "MODALITY")
    listing = terminal.command("studies")
    assert listing[0] == "OK"
    assert any(exam.study_uid in line and "DOE^JOHN" in line and line.strip().startswith(
        "arriving") for line in listing), listing
    assert terminal.command("studies now")[0].startswith("ERR usage")


def test_echo_the_running_agent_itself(running: Agent, terminal: Terminal) -> None:
    answer = terminal.command(f"echo EDGE@127.0.0.1:{agent_port(running)}")
    assert answer[0].startswith(f"OK EDGE@127.0.0.1:{agent_port(running)} answered C-ECHO in ")
    wrong = terminal.command("echo SELF")  # a peer entry with a wrong port
    assert wrong[0].startswith("ERR SELF (NOTEDGE@127.0.0.1:1): connection refused")


def test_find_runs_the_cli_command(running: Agent, terminal: Terminal) -> None:
    if running.console is None or running.console.table.find(["find"]) is None:
        pytest.skip("agent/cli/find.py is not there yet")
    usage = terminal.command("help find")
    assert usage[0] == "OK" and any("-k" in line for line in usage)
    answer = terminal.command(f"find EDGE@127.0.0.1:{agent_port(running)} -k PatientName=DOE*")
    assert answer[0] == "OK" and "0 matches from EDGE@127.0.0.1" in answer[-1]
    assert terminal.command("find CT --bogus")[0].startswith("ERR unrecognized arguments")


def test_a_bad_value_is_refused_naming_the_key(running: Agent, terminal: Terminal) -> None:
    answer = terminal.command("config set agent.port 70000")
    assert answer == ["ERR agent.port: a port is 0-65535, not 70000"]
    assert terminal.command("config diff") == ["OK nothing staged"]
    assert terminal.command("config set agent.nonsense 1")[0].startswith(
        "ERR agent.nonsense: unknown key")
    assert terminal.command("config get agent.port")[0] == (
        f"OK agent.port = {running.config.agent.port}")
    assert terminal.command("config get agent.max_pdu") == ["OK agent.max_pdu = 1048576 (default)"]


def test_set_diff_apply_keeps_comments_and_reloads(
    running: Agent, terminal: Terminal, console_config: Path
) -> None:
    port = agent_port(running)
    assert echo_agent(port, "STRANGER") == 0  # allow_unknown lets strangers echo, for now
    new_peer = '{ae_title = "NEWWS", host = "127.0.0.1", port = 4006, allow = ["echo"]}'
    assert terminal.command(f"config set peers.NEWWS {new_peer}")[0].startswith("OK staged")
    assert terminal.command("config set agent.allow_unknown []")[0].startswith("OK staged")
    diff = terminal.command("config diff")
    assert diff[0].startswith("OK ") and "peers.NEWWS.ae_title" in diff[0]
    assert '  +[peers.NEWWS]' in diff and '  -allow_unknown = ["echo", "find"]' in diff
    assert "NEWWS" not in console_config.read_text()  # staged, not written
    applied = terminal.command("config apply")
    assert applied[0].startswith("OK written to ")
    text = console_config.read_text()
    assert text.startswith("# edge-agent for the test bench\n")
    assert '[peers.NEWWS]\nae_title = "NEWWS"' in text and "allow_unknown = []" in text
    assert config_module.load_file(console_config).peers["NEWWS"].port == 4006
    assert not list(console_config.parent.glob(".agent.toml.*"))
    if hasattr(running, "reload"):
        assert echo_agent(port, "NEWWS") == 0
        assert echo_agent(port, "STRANGER") == -1
        assert terminal.command("peers")[0] == "OK 3 peers"
    else:
        assert "restart to apply" in applied[0]
    assert terminal.command("config diff") == ["OK nothing staged"]


def test_revert_drops_staged_changes(
    running: Agent, terminal: Terminal, console_config: Path
) -> None:
    before = console_config.read_text()
    assert terminal.command("config set agent.ae_title EDGE2")[0] == (
        'OK staged agent.ae_title = "EDGE2"; \'config apply\' writes it')
    assert terminal.command("config get agent.ae_title") == [
        'OK agent.ae_title = "EDGE2" (staged)']
    shown = terminal.command("config show agent")
    assert shown[0].endswith("(with staged changes)") and '  ae_title = "EDGE2"' in shown
    assert terminal.command("config revert") == ["OK staged changes dropped"]
    assert terminal.command("config revert") == ["OK nothing staged"]
    assert terminal.command("config get agent.ae_title") == ['OK agent.ae_title = "EDGE"']
    assert console_config.read_text() == before


def test_restart_asks_for_confirmation(
    running: Agent, terminal: Terminal, restarts: threading.Event
) -> None:
    assert terminal.command("restart")[0].startswith("ERR type 'restart yes' to confirm")
    assert not restarts.is_set()
    assert terminal.command("restart yes")[0].startswith("OK restarting")
    wait_until(restarts.is_set, 5, "the restart callback")


def test_a_failing_command_is_an_err_and_dicom_keeps_answering(
    running: Agent, terminal: Terminal, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> list[netinfo_module.Interface]:
        raise RuntimeError("the network module broke")

    monkeypatch.setattr(netinfo_module, "interfaces", broken)
    assert terminal.command("net") == ["ERR internal error: RuntimeError: the network module broke"]
    assert echo_agent(agent_port(running), "MODALITY") == 0
    assert terminal.command("version")[0].startswith("OK edge-agent")


def test_leds_test_walks_the_fitted_leds(
    console_config: Path, terminal: Terminal, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gpiozero import Device
    from gpiozero.pins.mock import MockFactory

    from agent.field.console import commands

    monkeypatch.setattr(commands, "LED_STEP", 0.01)
    monkeypatch.setattr(Device, "pin_factory", MockFactory())
    console_config.write_text(console_config.read_text() + "\n[leds]\nheartbeat = 17\n")
    agent = BoxAgent(config_module.load_file(console_config))
    agent.start()
    try:
        terminal.read_until(PROMPT.encode())
        assert agent.leds is not None and agent.leds.leds  # the agent drives the pins
        answer = terminal.command("leds test")
        assert answer[0] == "OK" and answer[-1] == "  all LEDs: off — test done"
        assert agent.leds is not None and agent.leds.leds  # and does so again afterwards
    finally:
        agent.close()
        Device.pin_factory.close()


# -- the cable ---------------------------------------------------------------------------


def test_unplug_and_replug(agent: Agent, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    link = tmp_path / "ttyUSB0"
    settings = ConsoleSettings(device=str(link), baud=115200)
    first, second = Terminal(), Terminal()
    try:
        with SerialConsole(agent, settings, retry_every=0.05) as console:
            wait_until(lambda: "not available" in caplog.text, 5, "the absent device logged")
            link.symlink_to(first.path)  # plugged in after the agent started
            first.read_until(PROMPT.encode())
            assert first.command("version")[0].startswith("OK edge-agent")
            first.close()  # unplugged
            link.unlink()
            wait_until(lambda: not console.transport.connected, 10, "the loss noticed")
            time.sleep(0.3)  # several retries while the device is gone
            link.symlink_to(second.path)
            banner = second.read_until(PROMPT.encode())
            assert b"edge-agent" in banner and b"Type 'help'" in banner
            assert second.command("version")[0].startswith("OK edge-agent")
    finally:
        first.close()
        second.close()
    assert caplog.text.count("not available") == 2  # once at start, once after the unplug


# -- a real terminal program -------------------------------------------------------------


def relay(a: int, b: int, stop: int) -> None:
    """Copy bytes both ways between two pty masters (what socat does) until ``stop`` reads."""
    while True:
        ready, _, _ = select.select([a, b, stop], [], [])
        if stop in ready:
            return
        for source, sink in ((a, b), (b, a)):
            if source in ready:
                try:
                    os.write(sink, os.read(source, 4096))
                except OSError:
                    return


def test_through_miniterm(running: Agent, terminal: Terminal) -> None:
    client_side = Terminal()
    screen = Terminal(raw=False)  # miniterm's own terminal: cooked, as a person's would be
    stop_read, stop_write = os.pipe()
    copier = threading.Thread(target=relay, args=(terminal.master, client_side.master, stop_read))
    copier.start()
    miniterm = subprocess.Popen(
        [sys.executable, "-m", "serial.tools.miniterm", client_side.path, "115200"],
        stdin=screen.slave, stdout=screen.slave, stderr=screen.slave, start_new_session=True,
    )
    try:
        screen.read_until(b"Quit: Ctrl+]")
        screen.read_until(b"---\r\n")
        screen.send(b"version\r")
        assert b"OK edge-agent" in screen.read_until(PROMPT.encode())
        screen.send(b"status\r")
        assert b"OK serving" in screen.read_until(PROMPT.encode())
        screen.send(b"\x1d")  # Ctrl-]: leave miniterm
        miniterm.wait(10)
    finally:
        if miniterm.poll() is None:
            miniterm.kill()
            miniterm.wait(10)
        os.write(stop_write, b"x")
        copier.join(10)
        for fd in (stop_read, stop_write):
            os.close(fd)
        client_side.close()
        screen.close()


def test_restart_yes_makes_edge_agent_run_exit_75(
    console_config: Path, terminal: Terminal, tmp_path: Path
) -> None:
    process = AgentProcess(console_config, tmp_path / "data")
    try:
        process.start()
        terminal.read_until(PROMPT.encode())
        assert terminal.command("restart yes")[0].startswith("OK restarting")
        assert process.proc is not None
        assert process.proc.wait(20) == 75
    finally:
        process.stop()
