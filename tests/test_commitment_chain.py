"""Storage commitment end to end (issue 14): a modality asks the agent, whose policy is
``commit_when = "pacs-committed"``, and the agent asks Orthanc as its PACS. The
modality's report waits until Orthanc has committed; with the PACS down the transaction
stays pending, across a restart of the agent too, and the report goes once the PACS is
back. Real parts only: the agent in-process (with its forwarding child process),
Orthanc 1.10.1, and the modality played by pynetdicom."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import dicomgen
import pytest
from pydicom.uid import generate_uid

from agent import config as config_module
from agent.app import Agent
from agent.archive import Layout
from agent.archive.index import connect
from agent.net.commit_scp import POLL
from agent.ops.queue import list_queue
from tests.commitment_peers import (
    MOD_AE,
    ReportCatcher,
    ReportingOrthanc,
    pacs_states,
    request,
    store,
)
from tests.support import free_port, peer, wait_until, write_config

AGENT_AE = "EDGE"
COUNT = 5  # instances the modality stores and asks about


def chain_config(root: Path, agent_port: int, modality_port: int, pacs_port: int) -> Path:
    """MODALITY may store and ask for commitment, answered once the PACS committed; PACS
    (Orthanc's AE) gets every instance, is asked for commitment 0.2 s after the last
    delivery and again after 2 s without a report; a failed delivery is tried again
    within a second."""
    modality = peer(MOD_AE, modality_port, allow=("echo", "store", "commit"))
    modality["commit_when"] = "pacs-committed"
    pacs = peer(ReportingOrthanc.ae_title, pacs_port, allow=("echo",))
    pacs.update(commit=True, commit_after_seconds=0.2, commit_report_timeout=2)
    path = write_config(root / "agent.toml",
                        {"ae_title": AGENT_AE, "port": agent_port, "bind": "127.0.0.1",
                         "data_dir": str(root / "data"), "min_free_mb": 0},
                        {"MODALITY": modality, "PACS": pacs})
    path.write_text(path.read_text() + '\n[forward]\nto = ["PACS"]\n'
                    "retry_first = 0.2\nretry_max = 0.5\n")
    return path


def owed(data_dir: Path, transaction_uid: str) -> tuple[str, float, float]:
    """(state, received_at, next_attempt) of a commitment transaction the agent recorded."""
    conn = connect(data_dir / "index.sqlite", readonly=True)
    try:
        row = conn.execute("SELECT state, received_at, next_attempt FROM commitments"
                           " WHERE transaction_uid = ?", (transaction_uid,)).fetchone()
    finally:
        conn.close()
    assert row is not None, f"transaction {transaction_uid} is not recorded"
    return str(row[0]), float(row[1]), float(row[2])


def waiting_down(agent: Agent) -> int:
    """Forward jobs to PACS that wait for it to come up, per the status (0 unless down)."""
    found = [d for d in agent.status.snapshot().destinations if d.name == "PACS"]
    return found[0].pending if found and found[0].state == "down" else 0


def start_agent(path: Path, running: list[Agent]) -> Agent:
    """An agent on ``path``'s config, in ``running`` until it is closed."""
    agent = Agent(config_module.load_file(path))
    running.append(agent)
    agent.start()
    return agent


def close_all(running: list[Agent]) -> None:
    while running:
        running.pop().close()


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_the_modality_report_waits_for_the_pacs_commitment_across_a_restart(
        tmp_path: Path) -> None:
    agent_port, modality_port, pacs_port = free_port(), free_port(), free_port()
    path = chain_config(tmp_path, agent_port, modality_port, pacs_port)
    data_dir = tmp_path / "data"
    datasets = list(dicomgen.series(COUNT, size=8))
    pairs = [(str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in datasets]
    wanted = {sop_uid for _cls, sop_uid in pairs}
    transaction = generate_uid()

    def pacs_committed_now() -> dict[str, str]:
        """What the agent's archive holds of Orthanc's commitment as the report comes."""
        return {uid: state for uid, (state, *_rest) in pacs_states(data_dir).items()}

    with contextlib.ExitStack() as stack:
        # the modality listens for its report from the start: a report sent too early is seen
        catcher = ReportCatcher(modality_port, observe=pacs_committed_now)
        stack.callback(catcher.close)
        running: list[Agent] = []
        stack.callback(close_all, running)

        # A: the PACS is down (Orthanc is not started yet)
        agent = start_agent(path, running)
        store(agent_port, datasets)
        assert request(agent_port, transaction, pairs) == (True, 0x0000)
        wait_until(lambda: waiting_down(agent) == COUNT, 30, "every delivery to wait")

        def held_twice() -> Any:
            # the reporter looked at the transaction and held it, rescheduling it a poll
            # later, at least twice: it was judged unsettled while deliveries failed
            state, received_at, next_attempt = owed(data_dir, transaction)
            return catcher.arrived.is_set() or state != "pending" or (
                next_attempt >= received_at + 2 * POLL)

        wait_until(held_twice, 30, "the reporter to hold the transaction")
        assert not catcher.arrived.wait(1.0), "the modality got a report while the PACS was down"
        assert owed(data_dir, transaction)[0] == "pending"
        wait_until(lambda: agent.status.snapshot().commit_reports_owed == 1, 10, "status")
        assert agent.status.snapshot().commit_reports_sent == 0
        assert not any(state == "committed" for state in pacs_committed_now().values())
        lines = list_queue(Layout(data_dir)).lines()
        assert f"PACS: {COUNT} pending, 0 retrying, 0 quarantined" in lines, lines

        # B: a restart of the agent on the same data dir; the PACS is still down
        running.remove(agent)
        agent.close()
        agent = start_agent(path, running)
        wait_until(lambda: agent.status.snapshot().commit_reports_owed == 1, 20,
                   "the restarted agent to owe the report")
        assert owed(data_dir, transaction)[0] == "pending"
        wait_until(lambda: waiting_down(agent) == COUNT, 20, "the deliveries to wait still")
        assert not catcher.reports

        # C: the PACS comes up on the port the agent's PACS peer names, its entry for the
        # agent at first naming a port where nothing listens: it takes the instances and
        # the agent's commitment requests, but its reports go nowhere. Delivered is not
        # committed: the modality waits.
        pacs = stack.enter_context(ReportingOrthanc(
            tmp_path / "orthanc", AGENT_AE, agent_port, port=pacs_port, reports_to=free_port()))
        assert pacs.port == pacs_port

        def asked() -> bool:
            states = pacs_committed_now()
            return catcher.arrived.is_set() or (
                set(states) == wanted and set(states.values()) == {"requested"})

        wait_until(asked, 30, "the deliveries and the agent's commitment request")
        assert pacs.count() == COUNT
        wait_until(lambda: "queue empty: everything was delivered"
                   in list_queue(Layout(data_dir)).lines(), 10, "an empty forward queue")
        asked_at = time.time()

        def held_since_asked() -> bool:
            _state, _received, next_attempt = owed(data_dir, transaction)
            return catcher.arrived.is_set() or next_attempt >= asked_at + 2 * POLL

        wait_until(held_since_asked, 30, "the reporter to hold the transaction")
        assert not catcher.reports, "the modality got a report before the PACS committed"
        assert owed(data_dir, transaction)[0] == "pending"

        # now Orthanc's reports reach the agent: the agent asks again (its report
        # timeout), Orthanc reports, and only then does the modality get its report
        pacs.report_to_agent()
        assert catcher.arrived.wait(45), "no report to the modality once the PACS reported"

        [(event_type, info)] = catcher.reports
        assert event_type == 1  # every instance committed
        assert str(info.TransactionUID) == transaction
        assert "FailedSOPSequence" not in info
        reported = {(str(item.ReferencedSOPClassUID), str(item.ReferencedSOPInstanceUID))
                    for item in info.ReferencedSOPSequence}
        assert reported == set(pairs)
        # the order: Orthanc's report had settled every instance in the agent's archive
        # before the modality's report was sent
        [at_report] = catcher.observed
        assert at_report == dict.fromkeys(wanted, "committed"), at_report

        held = {str(pacs.rest(f"/instances/{oid}/simplified-tags")["SOPInstanceUID"])
                for oid in pacs.rest("/instances")}
        assert held == wanted
        wait_until(lambda: agent.status.snapshot().commit_reports_sent == 1, 10, "status")
        assert agent.status.snapshot().commit_reports_owed == 0
        assert owed(data_dir, transaction)[0] == "reported"
        assert len(catcher.reports) == 1  # reported once
