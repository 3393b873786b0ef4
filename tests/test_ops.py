"""The console and the CLI reach the same result objects through agent/ops.

Each console command is driven through the console's command table of an agent running
in this process; the matching CLI subcommand is parsed by the real parser and run up to
the result it prints. Both talk to the same archive and the same peer, DCMTK's dcmqrscp.
"""

from __future__ import annotations

import ast
import dataclasses
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import dicomgen
import pytest

from agent import cli
from agent import config as config_module
from agent.app import Agent
from agent.archive import Layout
from agent.cli import echo as echo_cli
from agent.cli import find as find_cli
from agent.cli import queue as queue_cli
from agent.cli import retrieve as retrieve_cli
from agent.cli import status as status_cli
from agent.errors import PeerError
from agent.field.console import build_table
from agent.field.console.table import CommandTable, Reply
from agent.net import peerlog
from agent.ops.queue import QueueChange, QueueListing
from agent.ops.status import StatusReport
from agent.status_file import read_published
from tests import rawdicom
from tests.pacs import Dcmqrscp
from tests.support import REPO, free_port, peer, run_cli, wait_until, write_config

AGENT_PORT = free_port()


@dataclasses.dataclass
class Study:
    uid: str
    paths: list[Path]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Study:
    """Three CT images of DOE^JOHN."""
    root = tmp_path_factory.mktemp("study")
    patient = dicomgen.Study("DOE^JOHN", "P1", study_date="20260115", accession="A1")
    return Study(patient.study_uid, dicomgen.write_series(root / "ct", 3, study=patient))


@pytest.fixture(scope="module")
def qr(tmp_path_factory: pytest.TempPathFactory, study: Study) -> Iterator[Dcmqrscp]:
    """dcmqrscp holding the study, able to C-MOVE to the agent."""
    with Dcmqrscp(tmp_path_factory.mktemp("dcmqrscp"), {"edge": ("EDGE", AGENT_PORT)}) as pacs:
        pacs.load(study.paths)
        yield pacs


@pytest.fixture
def config_path(tmp_path: Path, qr: Dcmqrscp) -> Path:
    """The agent on AGENT_PORT, knowing dcmqrscp as QR (allowed to store: C-MOVE)."""
    return write_config(
        tmp_path / "agent.toml",
        {"ae_title": "EDGE", "port": AGENT_PORT, "bind": "127.0.0.1",
         "data_dir": str(tmp_path / "data"), "min_free_mb": 0},
        {"QR": peer(qr.ae_title, qr.port, ("echo", "store")),
         "GONE": peer("GONE", free_port())},
    )


@pytest.fixture
def running(config_path: Path) -> Iterator[Agent]:
    """The agent in this process."""
    agent = Agent(config_module.load_file(config_path))
    agent.start()
    try:
        yield agent
    finally:
        agent.close()


@pytest.fixture
def console(running: Agent) -> CommandTable:
    """The console's commands on the running agent (no serial port needed)."""
    return build_table(running)


def cli_result(module: ModuleType, config_path: Path, *argv: str) -> Any:
    """A CLI subcommand parsed by the real parser, run up to the result it prints."""
    args = cli.build_parser().parse_args([module.NAME, *argv, "--config", str(config_path)])
    return module.result(args, config_module.load_file(config_path))


def answer(console: CommandTable, line: str) -> Reply:
    """A console command's reply; it must carry the result it shows."""
    reply = console.run_line(line)
    assert reply.result is not None, reply.lines()
    return reply


# -- status ------------------------------------------------------------------------


def steady(report: StatusReport) -> dict[str, Any]:
    """The report without what moves by itself: free disk, the status version and the
    time the published file was written (the live model has no file)."""
    info = report.to_json()
    info.pop("disk_free")
    if info["agent"] is not None:
        info["agent"] = {k: v for k, v in info["agent"].items()
                         if k not in ("disk_free", "version", "written_at")}
    return info


def test_status_on_the_console_and_the_cli(console: CommandTable, running: Agent,
                                           config_path: Path) -> None:
    def agree() -> bool:
        published = read_published(running.layout.run_dir)
        if published is None or published.get("state") != "serving":
            return False  # housekeeping publishes within a tick
        console_report = answer(console, "status").result
        assert isinstance(console_report, StatusReport)
        return steady(console_report) == steady(cli_result(status_cli, config_path))

    wait_until(agree, 30, "the console's and the CLI's status to agree")
    reply = answer(console, "status")
    assert reply.text == "serving" and reply.result.running  # type: ignore[attr-defined]
    assert reply.body == tuple(reply.result.lines())  # type: ignore[attr-defined]


# -- queue -------------------------------------------------------------------------


def quarantine(agent: Agent, count: int) -> list[int]:
    """Only ``count`` quarantined jobs, for a destination no sender serves; their ids."""
    assert agent.archive is not None
    with agent.archive.index.transaction() as conn:
        conn.execute("DELETE FROM forward_jobs")
        conn.executemany(
            "INSERT INTO forward_jobs (SOPInstanceUID, destination, state, attempts,"
            " next_attempt, last_error, created_at) VALUES (?, 'DEAD', 'quarantined', 5, 0,"
            " 'refused: 0xA900', 0)",
            [(f"1.2.3.{n}",) for n in range(count)])
        return [pk for (pk,) in conn.execute("SELECT pk FROM forward_jobs ORDER BY pk")]


def test_queue_listing_retry_and_purge(console: CommandTable, running: Agent,
                                       config_path: Path) -> None:
    assert answer(console, "queue").result == cli_result(queue_cli, config_path)
    quarantine(running, 2)
    listing = answer(console, "queue")
    assert listing.result == cli_result(queue_cli, config_path)
    assert isinstance(listing.result, QueueListing) and len(listing.result.rows) == 2
    assert "  DEAD: 0 pending, 0 retrying, 2 quarantined" in listing.lines()
    printed = run_cli("queue", "--config", str(config_path))  # the real command, as a process
    assert printed.stdout.splitlines() == list(listing.body) == listing.result.lines()

    cli_retry = cli_result(queue_cli, config_path, "retry", "--all")
    assert cli_retry == QueueChange("retry", 2)
    quarantine(running, 2)
    retried = answer(console, "queue retry all")
    assert retried.result == cli_retry and retried.lines() == ["OK re-armed 2 jobs"]

    first, _ = quarantine(running, 2)
    one = answer(console, f"queue retry {first}")
    assert one.result == QueueChange("retry", 1)
    first, _ = quarantine(running, 2)
    assert one.result == cli_result(queue_cli, config_path, "retry", str(first))

    quarantine(running, 2)
    cli_purge = cli_result(queue_cli, config_path, "purge", "--yes")
    assert cli_purge == QueueChange("purge", 2)
    quarantine(running, 2)
    purged = answer(console, "queue purge yes")
    assert purged.result == cli_purge
    assert purged.lines() == ["OK purged 2 quarantined jobs"]


# -- echo, find, retrieve ----------------------------------------------------------


def test_echo_on_the_console_and_the_cli(console: CommandTable, config_path: Path) -> None:
    reply = answer(console, "echo QR")
    assert reply.result == cli_result(echo_cli, config_path, "QR")
    assert reply.text.startswith("QR (DCMQR@127.0.0.1:") and "answered C-ECHO" in reply.text
    with pytest.raises(PeerError) as refused:
        cli_result(echo_cli, config_path, "GONE")
    assert console.run_line("echo GONE").lines() == [f"ERR {refused.value}"]


def test_the_agent_still_logs_pynetdicoms_warnings_after_a_console_echo(
        console: CommandTable, running: Agent, qr: Dcmqrscp,
        caplog: pytest.LogCaptureFixture) -> None:
    assert answer(console, "echo QR").ok  # an association of our own, as the console makes
    peerlog.LIMITER.flush(everything=True)  # no earlier test's line holds this one back
    caplog.clear()
    # a peer sends a response where a request belongs: pynetdicom warns in the agent
    peer = socket.create_connection(("127.0.0.1", AGENT_PORT), timeout=20)
    try:
        peer.sendall(rawdicom.associate_rq([(1, rawdicom.VERIFICATION, (rawdicom.IMPLICIT,))],
                                           calling=qr.ae_title))
        accepted = rawdicom.read_pdu(peer)
        assert accepted is not None and accepted[0] == rawdicom.ASSOCIATE_AC
        peer.sendall(rawdicom.p_data(1, 3, rawdicom.command_set(
            AffectedSOPClassUID=rawdicom.VERIFICATION, CommandField=0x8030,
            MessageIDBeingRespondedTo=1, CommandDataSetType=0x0101, Status=0)))
        wait_until(lambda: any(r.name.startswith("pynetdicom") and r.levelno == logging.WARNING
                               and "unexpected C-ECHO service" in r.getMessage()
                               for r in caplog.records), 20, "pynetdicom's warning")
    finally:
        peer.close()


@pytest.mark.parametrize("options", [["-k", "PatientName=DOE*"],
                                     ["-L", "SERIES", "--json", "-k", "StudyInstanceUID"]])
def test_find_on_the_console_and_the_cli(console: CommandTable, config_path: Path,
                                         study: Study, options: list[str]) -> None:
    options = [o.replace("StudyInstanceUID", f"StudyInstanceUID={study.uid}") for o in options]
    reply = answer(console, " ".join(["find", "QR", *options]))
    report = cli_result(find_cli, config_path, "QR", *options)
    assert reply.result == report and report.succeeded
    assert len(report.result.matches) == 1  # the study, or its one series
    assert reply.body == tuple(report.json_lines() if "--json" in options else report.lines())


def test_retrieve_on_the_console_and_the_cli(console: CommandTable, running: Agent,
                                             config_path: Path, study: Study) -> None:
    key = f"StudyInstanceUID={study.uid}"
    from_cli = cli_result(retrieve_cli, config_path, "QR", "-k", key)
    reply = answer(console, f"retrieve QR -k {key}")
    assert from_cli.succeeded and from_cli.pulled.retrieved.progress.completed == 3
    # the same retrieve; the CLI lands beside the agent (it holds the data directory)
    assert from_cli.pulled.landing == "the running agent"
    assert reply.result.pulled.landing == "this agent"  # type: ignore[attr-defined]
    assert reply.result == dataclasses.replace(
        from_cli, pulled=dataclasses.replace(from_cli.pulled, landing="this agent"))
    assert reply.ok and reply.body == tuple(reply.result.lines())  # type: ignore[attr-defined]
    assert Layout(running.config.agent.data_dir).index_path.exists()


# -- the console's dependencies ----------------------------------------------------


def imported(path: Path) -> set[str]:
    """Every module a file imports, at the top, inside functions or under TYPE_CHECKING."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("package", ["agent/field/console", "agent/ops"])
def test_the_console_and_ops_import_neither_the_agent_class_nor_the_cli(package: str) -> None:
    files = sorted((REPO / package).glob("*.py"))
    assert files
    for path in files:
        above = {name for name in imported(path)
                 if name.split(".")[:2] in (["agent", "app"], ["agent", "cli"])}
        assert not above, (path.name, above)


def test_retrying_a_job_that_is_not_there_says_so(console: CommandTable, running: Agent,
                                                   config_path: Path) -> None:
    first, second = quarantine(running, 2)
    missing = second + 1000
    reply = console.run_line(f"queue retry {missing}")
    assert reply.lines() == [f"ERR no such job: #{missing} (edge-agent queue lists them)"]
    printed = run_cli("queue", "retry", str(missing), "--config", str(config_path))
    assert printed.returncode == 1 and printed.stdout == ""
    assert printed.stderr.strip() == f"edge-agent: no such job: #{missing} (edge-agent queue " \
                                     "lists them)"
    both = answer(console, f"queue retry {first} {missing}")  # the one that is there goes
    assert both.result == QueueChange("retry", 1, unknown=(missing,))
    assert not both.ok
    again = answer(console, f"queue retry {first}")  # pending now: nothing to re-arm
    assert again.lines() == [f"OK re-armed 0 jobs; #{first} is pending, nothing to re-arm"]
