"""Storage commitment toward the PACS (we are the SCU), against Orthanc 1.10.1."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dicomgen
import pytest
from bench.peers import Orthanc
from pydicom import dcmread

from agent import cli
from agent import config as config_module
from agent.app import Agent
from agent.cli import commit as commit_cli
from agent.field.console import build_table
from agent.ops.queue import list_queue
from tests import scu
from tests.commitment_peers import ReportingOrthanc, pacs_states
from tests.commitment_peers import request as ask_for_commitment
from tests.support import dcmtk, free_port, peer, run_cli, wait_until, write_config
from tests.test_studies import FakeClock

AGENT_AE = "EDGE"


def commit_config(root: Path, agent_port: int, pacs_port: int, *, after_seconds: float = 0.3,
                  report_timeout: float = 600, retain: str = "delivered") -> Path:
    """An agent forwarding to PACS with commit = true; the PACS may send its reports."""
    pacs = peer("ORTHANC", pacs_port, allow=("echo",))
    pacs.update(commit=True, commit_after_seconds=after_seconds,
                commit_report_timeout=report_timeout)
    path = write_config(root / "agent.toml",
                        {"ae_title": AGENT_AE, "port": agent_port, "bind": "127.0.0.1",
                         "data_dir": str(root / "data"), "min_free_mb": 0},
                        {"CT": peer("MODALITY", allow=("store",)), "PACS": pacs})
    path.write_text(path.read_text() + f'\n[forward]\nto = ["PACS"]\nretain_until = "{retain}"\n'
                    "retry_first = 0.2\nretry_max = 0.5\n")
    return path


@pytest.fixture
def agent_port() -> int:
    return free_port()


@pytest.fixture
def pacs(tmp_path: Path, agent_port: int) -> Iterator[Orthanc]:
    """Orthanc that knows the agent as a modality (where its reports go)."""
    with ReportingOrthanc(tmp_path / "orthanc", AGENT_AE, agent_port) as running:
        yield running


def uids(paths: list[Path]) -> set[str]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}


def all_in(data_dir: Path, wanted: set[str], state: str) -> bool:
    found = pacs_states(data_dir)
    return set(found) >= wanted and all(found[u][0] == state for u in wanted)


def delete_in_orthanc(orthanc: Orthanc, sop_uid: str) -> None:
    query = {"Level": "Instance", "Query": {"SOPInstanceUID": sop_uid}}
    [found] = orthanc.rest("/tools/find", json.dumps(query).encode())
    request = urllib.request.Request(
        f"http://127.0.0.1:{orthanc.http_port}/instances/{found}", method="DELETE")
    with urllib.request.urlopen(request, timeout=30):
        pass


def test_every_forwarded_instance_is_committed_by_orthancs_report(
        pacs: Orthanc, tmp_path: Path, agent_port: int) -> None:
    config = config_module.load_file(commit_config(tmp_path, agent_port, pacs.port))
    sent = dicomgen.write_series(tmp_path / "study", 20, size=16)
    wanted = uids(sent)
    with Agent(config) as agent:
        assert scu.store(agent_port, sent) == [0] * 20
        wait_until(lambda: all_in(tmp_path / "data", wanted, "committed"), 60,
                   "Orthanc's report to commit every instance")
        assert agent.archive is not None
        assert agent.archive.pacs_commits.committed_everywhere(wanted, ["PACS"]) == wanted
        wait_until(lambda: agent.status.snapshot().commit_awaiting == 0, 10, "status")
        assert agent.status.snapshot().commit_failed == 0
    listing = list_queue(_layout(config))
    assert any("PACS commitment: 0 awaiting, 0 requested, 20 committed, 0 failed" in line
               for line in listing.lines())


def _layout(config: Any) -> Any:
    from agent.archive import Layout

    return Layout(config.agent.data_dir)


def test_an_instance_orthanc_no_longer_holds_fails_with_0x0112(
        pacs: Orthanc, tmp_path: Path, agent_port: int) -> None:
    config = config_module.load_file(
        commit_config(tmp_path, agent_port, pacs.port, after_seconds=6))
    sent = dicomgen.write_series(tmp_path / "study", 3, size=8)
    gone, *kept = sorted(uids(sent))
    with Agent(config) as agent:
        assert scu.store(agent_port, sent) == [0] * 3
        wait_until(lambda: all_in(tmp_path / "data", {gone, *kept}, "awaiting"), 30,
                   "deliveries")
        delete_in_orthanc(pacs, gone)  # before the request (6 s after the last delivery)
        wait_until(lambda: pacs_states(tmp_path / "data")[gone][0] == "failed", 60, "the report")
        assert pacs_states(tmp_path / "data")[gone][1] == 0x0112
        assert all_in(tmp_path / "data", set(kept), "committed")
        wait_until(lambda: agent.status.snapshot().commit_failed == 1, 10, "status")
        assert "1 not committed" in agent.status.snapshot().summary()
    lines = list_queue(_layout(config)).lines()
    assert f"  not committed (reason 0x0112)  {gone}" in lines


def test_a_request_without_a_report_in_time_is_asked_again(
        tmp_path: Path, agent_port: int) -> None:
    # Orthanc's entry for us names a port where nothing listens: it takes the request
    # (without any entry it would reject it), but its report never arrives
    with ReportingOrthanc(tmp_path / "orthanc", AGENT_AE, agent_port,
                          reports_to=free_port()) as mute:
        config = config_module.load_file(
            commit_config(tmp_path, agent_port, mute.port, report_timeout=1.5))
        sent = dicomgen.write_series(tmp_path / "study", 2, size=8)
        wanted = uids(sent)
        with Agent(config) as agent:
            assert scu.store(agent_port, sent) == [0] * 2
            wait_until(lambda: all_in(tmp_path / "data", wanted, "requested"), 30, "a request")
            first = {pacs_states(tmp_path / "data")[u][2] for u in wanted}
            assert len(first) == 1 and None not in first

            def asked_again() -> bool:
                now = pacs_states(tmp_path / "data")
                return all(now[u][0] == "requested" and now[u][2] not in first for u in wanted)

            wait_until(asked_again, 30, "a new transaction")
            assert agent.status.snapshot().commit_failed == 0
            # asked again for want of a report, not because a request failed
            [pacs] = [d for d in agent.status.snapshot().destinations if d.name == "PACS"]
            assert "storage commitment" not in (pacs.last_error or ""), pacs.last_error


def test_retain_until_committed_keeps_the_uncommitted_under_the_floor(
        pacs: Orthanc, tmp_path: Path, agent_port: int) -> None:
    from agent.forward import retention
    from agent.ops.commit import commit_study

    # the committer waits an hour: the test asks by hand, once Orthanc lost one instance
    config = config_module.load_file(
        commit_config(tmp_path, agent_port, pacs.port, after_seconds=3600, retain="committed"))
    data_dir = tmp_path / "data"
    sent = dicomgen.write_series(tmp_path / "study", 4, size=8)
    gone, *kept = sorted(uids(sent))
    study = str(dcmread(sent[0], stop_before_pixels=True).StudyInstanceUID)
    with Agent(config) as agent:
        assert agent.archive is not None
        assert scu.store(agent_port, sent) == [0] * 4
        wait_until(lambda: all_in(data_dir, {gone, *kept}, "awaiting"), 30, "deliveries")
        agent.reload(dataclasses.replace(  # free space under the floor, by a reload
            config, agent=dataclasses.replace(config.agent, min_free_mb=1 << 42)))
        assert retention.sweep(agent.archive, config.forward, commit_enabled=["PACS"]) == 0
        delete_in_orthanc(pacs, gone)
        result = commit_study(config, "PACS", study, timeout=30,
                              lands=lambda serve: contextlib.nullcontext(agent.landing()))
        assert (result.committed, result.failed) == (3, {gone: 0x0112})
        assert retention.sweep(agent.archive, config.forward, commit_enabled=["PACS"]) == 3
        archived = {p.stem for p in (data_dir / "archive").rglob("*.dcm")}
        assert archived == {gone}  # delivered, not committed: kept


def test_commit_cli_asks_for_a_study_and_prints_the_committed_count(
        pacs: Orthanc, tmp_path: Path, agent_port: int) -> None:
    config_file = commit_config(tmp_path, agent_port, pacs.port, after_seconds=3600)
    config = config_module.load_file(config_file)
    sent = dicomgen.write_series(tmp_path / "study", 5, size=8)
    study = str(dcmread(sent[0], stop_before_pixels=True).StudyInstanceUID)
    with Agent(config) as agent:
        assert scu.store(agent_port, sent) == [0] * 5
        wait_until(lambda: pacs.count() == 5, 30, "deliveries")
        done = run_cli("commit", "PACS", "--study", study, "--config", str(config_file),
                       "--timeout", "30")
        argv = ["commit", "PACS", "--study", study, "--timeout", "30"]
        from_cli = commit_cli.result(cli.build_parser().parse_args(argv), config)
        reply = build_table(agent).run_line(" ".join(argv))
    assert done.returncode == 0, done.stderr
    assert "5 committed" in done.stdout, done.stdout
    assert from_cli.ok and from_cli.committed == 5
    assert reply.result == from_cli, reply.lines()  # the console shows the same result
    assert reply.lines()[0].startswith("OK PACS: 5 committed, 0 failed of 5 instances")


@pytest.mark.parametrize(("where", "change", "key"), [
    ("pacs", {"commit_after_instances": 0}, "peers.PACS.commit_after_instances"),
    ("pacs", {"commit_after_seconds": 0}, "peers.PACS.commit_after_seconds"),
    ("pacs", {"commit_report_timeout": -1}, "peers.PACS.commit_report_timeout"),
    ("pacs", {"commit": "yes"}, "peers.PACS.commit"),
    ("forward", {"retain_until": "forever"}, "forward.retain_until"),
])
def test_commitment_keys_are_checked_and_errors_name_the_key(
        where: str, change: dict[str, Any], key: str) -> None:
    from agent.errors import ConfigError

    pacs = {**peer("ORTHANC", 4242, allow=("echo",)), "commit": True}
    forward: dict[str, Any] = {"to": ["PACS"]}
    (pacs if where == "pacs" else forward).update(change)
    with pytest.raises(ConfigError) as raised:
        config_module.parse({"agent": {}, "peers": {"PACS": pacs}, "forward": forward})
    assert key in str(raised.value)


def test_defaults_and_retain_until_committed_parse(tmp_path: Path) -> None:
    config = config_module.load_file(
        commit_config(tmp_path, free_port(), free_port(), retain="committed"))
    pacs = config.peers["PACS"]
    assert (pacs.commit, pacs.commit_after_instances, pacs.commit_report_timeout) == (
        True, 500, 600.0)
    assert config.forward.retain_until == "committed"
    assert not config.peers["CT"].commit


def test_a_report_on_the_request_association_is_taken_there(
        tmp_path: Path, agent_port: int) -> None:
    """A scripted PACS that stores, then reports on the N-ACTION's own association."""
    import threading

    from pydicom import Dataset
    from pynetdicom import AE, AllStoragePresentationContexts, evt
    from pynetdicom.sop_class import (
        StorageCommitmentPushModel,  # type: ignore[attr-defined]
        StorageCommitmentPushModelInstance,  # type: ignore[attr-defined]
    )

    answered: list[int] = []
    sent_response = threading.Event()

    def report_later(assoc: Any, info: Dataset) -> None:
        sent_response.wait(10)
        result = Dataset()
        result.TransactionUID = info.TransactionUID
        result.ReferencedSOPSequence = info.ReferencedSOPSequence
        status, _ = assoc.send_n_event_report(
            result, 1, StorageCommitmentPushModel, StorageCommitmentPushModelInstance)
        answered.append(int(status.Status))

    def on_action(event: Any) -> tuple[int, None]:
        info = event.action_information
        threading.Thread(target=report_later, args=(event.assoc, info), daemon=True).start()
        return 0x0000, None

    def on_sent(event: Any) -> None:
        if type(event.message).__name__ == "N_ACTION_RSP":
            sent_response.set()

    scp = AE(ae_title="SCRIPTED")
    scp.supported_contexts = AllStoragePresentationContexts
    scp.add_supported_context(StorageCommitmentPushModel)
    port = free_port()
    server = scp.start_server(("127.0.0.1", port), block=False, evt_handlers=[
        (evt.EVT_C_STORE, lambda event: 0x0000), (evt.EVT_N_ACTION, on_action),
        (evt.EVT_DIMSE_SENT, on_sent)])
    try:
        path = commit_config(tmp_path, agent_port, port)
        path.write_text(path.read_text().replace('"ORTHANC"', '"SCRIPTED"'))
        config = config_module.load_file(path)
        sent = dicomgen.write_series(tmp_path / "study", 3, size=8)
        with Agent(config):
            assert scu.store(agent_port, sent) == [0] * 3
            wait_until(lambda: all_in(tmp_path / "data", uids(sent), "committed"), 30,
                       "the report on the same association")
        assert answered == [0]
    finally:
        server.shutdown()


def test_instances_delivered_before_commit_was_set_are_asked_about_too(
        pacs: Orthanc, tmp_path: Path, agent_port: int) -> None:
    path = commit_config(tmp_path, agent_port, pacs.port, retain="committed")
    plain = path.read_text().replace("commit = true", "commit = false")
    assert plain != path.read_text()
    path.write_text(plain)
    sent = dicomgen.write_series(tmp_path / "study", 4, size=16)
    wanted = uids(sent)
    with Agent(config_module.load_file(path)) as agent:
        assert scu.store(agent_port, sent) == [0] * 4
        wait_until(lambda: pacs.count() == 4, 60, "the instances delivered")
        wait_until(lambda: not list_queue(_layout(agent.config)).rows, 10, "jobs done")
    assert pacs_states(tmp_path / "data") == {}  # no commitment was asked of PACS
    path.write_text(plain.replace("commit = false", "commit = true"))
    with Agent(config_module.load_file(path)):
        wait_until(lambda: all_in(tmp_path / "data", wanted, "committed"), 60,
                   "the earlier deliveries asked about and committed")


# -- what goes wrong is said at once, and logged in the agent -------------------------


def _forwarded_study(config: Any, pacs: Orthanc, tmp_path: Path, count: int) -> str:
    """Run the agent until ``count`` instances of a new study reached the PACS; its UID."""
    sent = dicomgen.write_series(tmp_path / "study", count, size=8)
    with Agent(config):
        assert scu.store(config.agent.port, sent) == [0] * count
        wait_until(lambda: pacs.count() == count, 30, "deliveries")
    return str(dcmread(sent[0], stop_before_pixels=True).StudyInstanceUID)


def test_commit_with_the_agent_stopped_takes_the_report_itself(
        pacs: Orthanc, tmp_path: Path, agent_port: int) -> None:
    # Orthanc reports on a new association to the agent's port: with no agent running,
    # the command receives it there itself, as retrieve does, instead of waiting in vain
    config_file = commit_config(tmp_path, agent_port, pacs.port, after_seconds=3600)
    study = _forwarded_study(config_module.load_file(config_file), pacs, tmp_path, 3)
    done = run_cli("commit", "PACS", "--study", study, "--config", str(config_file),
                   "--timeout", "30")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("OK PACS: 3 committed, 0 failed of 3 instances"), done.stdout
    assert all_in(tmp_path / "data", uids(list((tmp_path / "study").iterdir())), "committed")


def test_commit_to_a_peer_without_commit_true_says_so_before_asking(
        tmp_path: Path, agent_port: int) -> None:
    path = commit_config(tmp_path, agent_port, free_port())
    path.write_text(path.read_text().replace("commit = true", "commit = false"))
    done = run_cli("commit", "PACS", "--study", "1.2.3", "--config", str(path),
                   "--timeout", "30")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "peers.PACS.commit: is not true: the agent refuses this peer's" in done.stderr


def test_a_pacs_that_refuses_the_request_is_named(tmp_path: Path, agent_port: int) -> None:
    # Orthanc knows us, but not for storage commitment: it hangs up on the N-ACTION
    entry = {"AET": AGENT_AE, "Host": "127.0.0.1", "Port": agent_port,
             "AllowStorageCommitment": False}
    with Orthanc(tmp_path / "orthanc", modalities={AGENT_AE: entry}) as refusing:
        config_file = commit_config(tmp_path, agent_port, refusing.port, after_seconds=3600)
        study = _forwarded_study(config_module.load_file(config_file), refusing, tmp_path, 2)
        done = run_cli("commit", "PACS", "--study", study, "--config", str(config_file),
                       "--timeout", "30")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "ended the association" in done.stderr and "it refused it" in done.stderr
    assert pacs_states(tmp_path / "data")  # the instances wait to be asked again
    assert {s for s, _, _ in pacs_states(tmp_path / "data").values()} == {"awaiting"}


def test_a_peer_without_storage_commitment_is_named(tmp_path: Path, agent_port: int) -> None:
    # DCMTK's storescp is no commitment SCP: it accepts the association, not the context
    port = free_port()
    (tmp_path / "received").mkdir()
    storescp = subprocess.Popen([dcmtk("storescp"), "-aet", "ORTHANC", "-od",
                                 str(tmp_path / "received"), str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        echo = [dcmtk("echoscu"), "-aec", "ORTHANC", "127.0.0.1", str(port)]
        wait_until(lambda: subprocess.run(echo, capture_output=True).returncode == 0, 20,
                   "storescp to listen")
        config = config_module.load_file(
            commit_config(tmp_path, agent_port, port, after_seconds=3600))
        sent = dicomgen.write_series(tmp_path / "study", 1, size=8)
        with Agent(config) as agent:
            assert scu.store(agent_port, sent) == [0]
            study = str(dcmread(sent[0], stop_before_pixels=True).StudyInstanceUID)
            reply = build_table(agent).run_line(f"commit PACS --study {study} --timeout 30")
    finally:
        storescp.terminate()
        storescp.wait(10)
    said = "\n".join(reply.lines())
    assert "refused every presentation context proposed" in said, said
    assert "Storage Commitment Push Model" in said


def _asked_by_the_test(pacs: Orthanc) -> str:
    """An N-ACTION to Orthanc as the agent's AE title, on a transaction the agent does not
    know: Orthanc then reports to the agent on a new association. The transaction UID."""
    from pydicom.uid import generate_uid

    uid = str(generate_uid())
    accepted, code = ask_for_commitment(
        pacs.port, uid, [("1.2.840.10008.5.1.4.1.1.2", str(generate_uid()))],
        calling_ae=AGENT_AE, called_ae=pacs.ae_title)  # Orthanc reports as the AE called
    assert accepted and code == 0
    return uid


def _warned(caplog: pytest.LogCaptureFixture, words: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and words in r.getMessage()]


def test_the_agent_logs_a_report_from_a_peer_without_commit_true(
        pacs: Orthanc, tmp_path: Path, agent_port: int,
        caplog: pytest.LogCaptureFixture) -> None:
    path = commit_config(tmp_path, agent_port, pacs.port)
    path.write_text(path.read_text().replace("commit = true", "commit = false"))
    with caplog.at_level(logging.WARNING), Agent(config_module.load_file(path)):
        _asked_by_the_test(pacs)
        [line] = wait_until(lambda: _warned(caplog, "refused storage commitment reports"),
                            30, "the refusal logged")
    assert "ORTHANC (peers.PACS)" in line and "peers.PACS has no commit = true" in line


def test_the_agent_logs_a_report_on_a_transaction_it_does_not_know(
        pacs: Orthanc, tmp_path: Path, agent_port: int,
        caplog: pytest.LogCaptureFixture) -> None:
    config = config_module.load_file(commit_config(tmp_path, agent_port, pacs.port))
    with caplog.at_level(logging.WARNING), Agent(config):
        uid = _asked_by_the_test(pacs)
        [line] = wait_until(lambda: _warned(caplog, "ignored a storage commitment report"),
                            30, "the unknown transaction logged")
    assert "from peers.PACS" in line and "a transaction we are not waiting for" in line
    assert uid not in line  # UIDs only at debug level


def test_with_when_complete_orthanc_is_asked_once_per_study(
        pacs: Orthanc, tmp_path: Path, agent_port: int) -> None:
    """Batches of two would take three requests for six instances: per study, it is one."""
    path = commit_config(tmp_path, agent_port, pacs.port)
    text = path.read_text().replace('to = ["PACS"]\n', 'to = ["PACS"]\nwhen = "complete"\n')
    path.write_text(text.replace("commit = true", "commit = true\ncommit_after_instances = 2")
                    + "\n[study]\nquiet_seconds = 5\n")
    config = config_module.load_file(path)
    assert config.peers["PACS"].commit_after_instances == 2
    sent = dicomgen.write_series(tmp_path / "study", 6, size=16)
    wanted = uids(sent)
    clock = FakeClock(1000.0)
    agent = Agent(config)
    agent.study_clock = clock
    with agent:
        assert scu.store(agent_port, sent) == [0] * 6
        assert agent.studies is not None
        agent.studies.tick()
        assert pacs_states(tmp_path / "data") == {}  # held: nothing delivered yet
        clock.now += 5  # the quiet period passes: complete, released, sent, asked
        agent.studies.tick()
        wait_until(lambda: all_in(tmp_path / "data", wanted, "committed"), 60,
                   "Orthanc's report to commit the study")
    transactions = {txn for _state, _reason, txn in pacs_states(tmp_path / "data").values()}
    assert len(transactions) == 1
