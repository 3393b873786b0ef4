"""Quarantined and waiting MPPS messages are shown and re-armed: ``queue`` (and its
``--json``), ``status`` (and its ``--json``, the systemd line, the fault LED), ``queue retry
DEST``, the console's ``queue``. pynetdicom plays the modality and a RIS that refuses
permanently until it is fixed; the agent runs in this process."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from pydicom.uid import generate_uid

from agent import cli
from agent import config as config_module
from agent.app import Agent
from agent.archive import Layout, mpps
from agent.archive.index import Index
from agent.cli import queue as queue_cli
from agent.cli import status as status_cli
from agent.field import patterns
from agent.field.console import build_table
from agent.ops.queue import QueueChange, QueueListing, list_queue, retry_jobs
from agent.ops.status import StatusReport
from tests.mpps_peers import Modality, creation, ending, start
from tests.support import free_port, run_cli, wait_until
from tests.test_mpps_forward import Ris, make_config

REFUSED = 0x0106  # Invalid Attribute Value: the RIS will refuse it again (permanent)


class FixableRis(Ris):
    """A RIS refusing every N-CREATE and N-SET with ``refusal`` until it is fixed (None)."""

    def __init__(self, port: int) -> None:
        super().__init__(port)
        self.refusal: int | None = REFUSED

    def _on_create(self, event: Any) -> tuple[int, None]:
        self._took("N-CREATE", str(event.request.AffectedSOPInstanceUID), event.attribute_list)
        return self.refusal or 0x0000, None

    def _on_set(self, event: Any) -> tuple[int, None]:
        self._took("N-SET", str(event.request.RequestedSOPInstanceUID), event.modification_list)
        return self.refusal or 0x0000, None


@pytest.fixture
def ris(tmp_path: Path) -> Iterator[FixableRis]:
    """The refusing RIS on a free port; stopped after the test."""
    peer = FixableRis(free_port())
    peer.start()
    yield peer
    peer.close()


def cli_result(module: ModuleType, path: Path, *argv: str) -> Any:
    """A CLI subcommand parsed by the real parser, run up to the result it prints."""
    args = cli.build_parser().parse_args([module.NAME, *argv, "--config", str(path)])
    return module.result(args, config_module.load_file(path))


def held(agent: Agent) -> list[tuple[str, str]]:
    assert agent.archive is not None
    return [(job.kind, job.state) for job in mpps.jobs(agent.archive.index)]


def mpps_in_status(path: Path) -> Any:
    """The MPPS forwarding the running agent reports in ``status --json`` (its result)."""
    report = cli_result(status_cli, path)
    assert isinstance(report, StatusReport)
    agent = report.to_json()["agent"]
    return None if agent is None else agent.get("mpps")


def test_a_quarantined_step_is_shown_and_a_retry_sends_it_in_order(
        tmp_path: Path, running: list[Agent], ris: FixableRis) -> None:
    path = make_config(tmp_path, ris.port)
    agent = start(path, running)
    uid = generate_uid()
    modality = Modality(agent.config.agent.port)
    try:
        assert modality.create(creation(generate_uid()), uid).Status == 0x0000
        wait_until(lambda: held(agent) == [("N-CREATE", mpps.QUARANTINED)], 20,
                   "the N-CREATE quarantined after its permanent_tries")
        final = ending("COMPLETED", [generate_uid()], [])
        assert modality.set(final, uid).Status == 0x0000
    finally:
        modality.close()
    # behind its quarantined N-CREATE the N-SET is quarantined at once, never sent alone
    assert held(agent) == [("N-CREATE", mpps.QUARANTINED), ("N-SET", mpps.QUARANTINED)]
    assert [kind for kind, _uid, _ds in ris.received] == ["N-CREATE", "N-CREATE"]

    listing = cli_result(queue_cli, path)
    assert isinstance(listing, QueueListing)
    printed = run_cli("queue", "--json", "--config", str(path))  # the real command
    assert printed.returncode == 0, printed.stderr
    shown = json.loads(printed.stdout)
    assert shown["mpps"] == {"RIS": {"quarantined": 2}}
    assert [(r["kind"], r["step_uid"], r["state"], r["attempts"]) for r in shown["mpps_rows"]] \
        == [("N-CREATE", uid, "quarantined", 2), ("N-SET", uid, "quarantined", 0)]
    first, second = shown["mpps_rows"]
    assert "0x0106" in first["last_error"]
    assert second["last_error"] == f"after #{first['seq']} was quarantined"
    assert "Müller" not in printed.stdout and "ACC1" not in printed.stdout  # no patient data
    assert shown == {**listing.to_json(), "taken_at": shown["taken_at"]}
    text = listing.lines()
    assert "RIS MPPS: 0 waiting, 0 retrying, 2 quarantined, 0 done" in text
    assert "queue empty: everything was delivered" not in text
    assert any(line.startswith(f"  #{first['seq']}") and "N-CREATE" in line and uid in line
               for line in text)
    console = build_table(agent)
    assert list(console.run_line("queue").body) == text

    expected = [{"name": "RIS", "waiting": 0, "retrying": 0, "quarantined": 2}]
    wait_until(lambda: mpps_in_status(path) == expected, 20, "status to show the quarantine")
    snapshot = agent.status.snapshot()
    assert "2 MPPS quarantined" in snapshot.summary()  # systemd's status line
    assert patterns.fault(snapshot) == patterns.FAULT_QUARANTINE  # the fault LED
    lines = cli_result(status_cli, path).lines()
    assert "mpps      RIS: 0 waiting, 0 retrying, 2 quarantined" in lines

    ris.refusal = None  # the RIS is fixed
    retried = run_cli("queue", "retry", "RIS", "--config", str(path))
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout.strip() == "OK re-armed 0 jobs and 2 MPPS messages"
    received = ris.wait_for(4)
    assert [(kind, step) for kind, step, _ds in received[2:]] == [
        ("N-CREATE", uid), ("N-SET", uid)]
    assert received[3][2].PerformedProcedureStepStatus == "COMPLETED"
    wait_until(lambda: held(agent) == [], 20, "both passed on")
    assert cli_result(queue_cli, path).mpps == {"RIS": {"done": 2}}
    wait_until(lambda: mpps_in_status(path) == [{**expected[0], "quarantined": 0}], 20,
               "status to drop the quarantine")
    # the quarantine's fault is over (a clock this machine has not synchronised may show)
    assert patterns.fault(agent.status.snapshot()) != patterns.FAULT_QUARANTINE


def test_retry_all_and_purge_take_mpps_job_ids_do_not(
        tmp_path: Path, running: list[Agent], ris: FixableRis) -> None:
    path = make_config(tmp_path, ris.port)
    agent = start(path, running)
    modality = Modality(agent.config.agent.port)
    try:
        assert modality.create(creation(generate_uid()), generate_uid()).Status == 0x0000
    finally:
        modality.close()
    wait_until(lambda: held(agent) == [("N-CREATE", mpps.QUARANTINED)], 20, "a quarantine")
    assert cli_result(queue_cli, path, "retry", "1") == QueueChange("retry", 0, unknown=(1,))
    assert held(agent) == [("N-CREATE", mpps.QUARANTINED)]  # job ids name instance jobs
    wrong = run_cli("queue", "retry", "NOWHERE", "--config", str(path))
    assert wrong.returncode != 0 and "no such job or destination: NOWHERE" in wrong.stderr
    console = build_table(agent)
    assert console.run_line("queue retry NOWHERE").lines()[0].startswith("ERR usage")
    assert held(agent) == [("N-CREATE", mpps.QUARANTINED)]
    assert console.run_line("queue retry all").lines() == [
        "OK re-armed 0 jobs and 1 MPPS messages"]
    wait_until(lambda: len(ris.received) == 4 and held(agent) == [("N-CREATE", mpps.QUARANTINED)],
               20, "tried twice more, quarantined again")
    assert console.run_line("queue purge yes").lines() == [
        "OK purged 0 quarantined jobs and 1 MPPS messages"]
    assert held(agent) == []


def test_check_config_names_mpps_forwarding_and_the_study_rules(tmp_path: Path) -> None:
    path = make_config(tmp_path, 104)
    path.write_text(path.read_text() + "\n[study]\nquiet_seconds = 45\ngive_up_hours = 12\n")
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "  pass every MPPS N-CREATE and N-SET on to RIS, in order" in result.stdout
    assert "else 45 s after its last instance" in result.stdout
    assert "after 12 h completes it" in result.stdout


def test_retry_by_destination_rearms_only_that_destinations_jobs(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "data")
    layout.create()
    with Index(layout.index_path) as index, index.transaction() as conn:
        conn.executemany(
            "INSERT INTO forward_jobs (SOPInstanceUID, destination, state, attempts,"
            " next_attempt, last_error, created_at) VALUES (?, ?, 'quarantined', 3, 0,"
            " 'refused: 0xA900', 0)", [("1.2.3.1", "A"), ("1.2.3.2", "B")])
        conn.executemany(
            "INSERT INTO mpps_jobs (step_uid, destination, kind, message, state, attempts,"
            " next_attempt, last_error, created_at) VALUES ('1.2.4', ?, ?, '{}', ?, ?, 0,"
            " 'refused', 0)",
            [("A", "N-CREATE", "quarantined", 2), ("A", "N-SET", "quarantined", 0),
             ("B", "N-CREATE", "pending", 1), ("B", "N-SET", "pending", 0)])
    assert retry_jobs(layout, None, ["A"]) == QueueChange("retry", 1, mpps=2)
    listing = list_queue(layout)
    assert listing.depth == {"A": {"pending": 1}, "B": {"quarantined": 1}}
    assert listing.mpps == {"A": {"waiting": 2}, "B": {"retrying": 1, "waiting": 1}}
    assert [(r.destination, r.kind, r.state) for r in listing.mpps_rows] == [
        ("B", "N-CREATE", "retrying")]
    with Index(layout.index_path) as index:
        due = mpps.due(index, "A", now=time.time())
    assert [job.kind for job in due] == ["N-CREATE"]  # its N-SET waits for it
