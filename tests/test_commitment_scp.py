"""Storage Commitment Push Model SCP: the modality asks, the agent commits only what it
holds durably, and reports on a new association; real peers (Orthanc, pynetdicom)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import dicomgen
import pytest
from bench.peers import Orthanc
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from agent import config as config_module
from agent.app import Agent
from agent.archive import Archive, commitments
from agent.config import Config
from agent.dicom.contexts import (
    STORAGE_COMMITMENT,
    service_of,
)
from agent.dicom.status import (
    CLASS_INSTANCE_CONFLICT,
    NO_SUCH_OBJECT_INSTANCE,
    PROCESSING_FAILURE,
)
from agent.errors import ConfigError
from agent.net import commit_scp as commitment
from tests.commitment_peers import MOD_AE, ReportCatcher, reference, request, store
from tests.support import FixedRouting, free_port, wait_until, write_config


def make_config(tmp_path: Path, mod_port: int, allow: tuple[str, ...], **extra: Any) -> Path:
    """An agent with one modality peer at ``mod_port`` (its report address)."""
    peer = {"ae_title": MOD_AE, "host": "127.0.0.1", "port": mod_port, "allow": list(allow),
            **extra}
    return write_config(
        tmp_path / "agent.toml",
        {"ae_title": "EDGE", "port": free_port(), "bind": "127.0.0.1",
         "data_dir": str(tmp_path / "data"), "min_free_mb": 0},
        {"MODALITY": peer},
    )


@pytest.fixture
def instances() -> list[Dataset]:
    return list(dicomgen.series(2, size=8))


def start(path: Path, agents: list[Agent]) -> Agent:
    agent = Agent(config_module.load_file(path))
    agent.start()
    agents.append(agent)
    return agent


# configuration


def test_commit_is_a_service_and_its_policy_is_checked(tmp_path: Path) -> None:
    peer = config_module.parse({"peers": {"CT": {
        "ae_title": "CT", "host": "h", "port": 104, "allow": ["echo", "store", "commit"]}}}
    ).peers["CT"]
    assert "commit" in peer.allow
    assert (peer.commit_when, peer.commit_give_up_hours) == ("stored", 24.0)
    assert service_of(STORAGE_COMMITMENT) == "commit"
    for key, value in (("commit_when", "later"), ("commit_give_up_hours", 0),
                       ("commit_give_up_hours", "x")):
        raw = {"peers": {"CT": {"ae_title": "CT", "host": "h", "port": 104, key: value}}}
        with pytest.raises(ConfigError) as caught:
            config_module.parse(raw)
        assert caught.value.key == f"peers.CT.{key}"


# the archive's decisions, with injectable time


def _archive_with(tmp_path: Path, config: Config, instances: list[Dataset],
                  agents: list[Agent]) -> Agent:
    agent = start(tmp_path / "agent.toml", agents)
    store(agent.config.agent.port, instances)
    return agent


def _pacs(port: int, *, commit: bool) -> str:
    """A forward destination PACS at ``port`` (TOML to append to a config)."""
    return (f'\n[peers.PACS]\nae_title = "PACS"\nhost = "127.0.0.1"\nport = {port}\n'
            f'commit = {str(commit).lower()}\n\n[forward]\nto = ["PACS"]\n')


def test_give_up_and_conflicts(tmp_path: Path, instances: list[Dataset],
                               running: list[Agent]) -> None:
    path = make_config(tmp_path, free_port(), ("echo", "store", "commit"),
                       commit_when="pacs-committed", commit_give_up_hours=1)
    path.write_text(path.read_text() + _pacs(free_port(), commit=True))
    agent = _archive_with(tmp_path, config_module.load_file(tmp_path / "agent.toml"), instances,
                          running)
    assert agent.archive is not None
    index: Any = agent.archive.index
    held = (str(instances[0].SOPClassUID), str(instances[0].SOPInstanceUID))
    pairs = [held, ("1.2.3", str(instances[1].SOPInstanceUID)), (held[0], "1.2.3.4")]
    assert commitments.record(index, "1.2.9", "MODALITY", pairs, 1000.0) == commitments.NEW
    again = commitments.record(index, "1.2.9", "MODALITY", pairs, 1000.0)
    assert again == commitments.REPEATED
    other = commitments.record(index, "1.2.9", "MODALITY", pairs[:1], 1000.0)
    assert other == commitments.CONFLICTING
    tx = next(t for t in commitments.due(index, 2000.0) if t.uid == "1.2.9")
    early = commitments.decide(index, tx, "pacs-committed", 1, 1000.0 + 3599)
    assert early.waiting == [held] and not early.settled
    assert {reason for *_p, reason in early.failed} == {
        CLASS_INSTANCE_CONFLICT, NO_SUCH_OBJECT_INSTANCE}
    late = commitments.decide(index, tx, "pacs-committed", 1, 1000.0 + 3600)
    assert late.settled and (*held, PROCESSING_FAILURE) in late.failed
    assert commitments.decide(index, tx, "stored", 1, 1000.0).committed == [held]


def test_forwarded_waits_for_every_destination(tmp_path: Path, instances: list[Dataset]) -> None:
    path = make_config(tmp_path, free_port(), ("echo", "store", "commit"))
    path.write_text(path.read_text() + _pacs(free_port(), commit=True))
    config = config_module.load_file(path)
    archive = Archive(config.agent.data_dir, routing=FixedRouting("PACS"))
    try:
        for n, ds in enumerate(instances):
            source = tmp_path / f"{n}.dcm"
            ds.save_as(source, enforce_file_format=True)
            archive.ingest(source, sop_class_uid=str(ds.SOPClassUID),
                           sop_instance_uid=str(ds.SOPInstanceUID), calling_ae=MOD_AE)
        pairs = [(str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in instances]
        commitments.record(archive.index, "1.2.10", "MODALITY", pairs, 0.0)
        tx = commitments.due(archive.index, 1.0)[0]
        assert len(commitments.decide(archive.index, tx, "forwarded", 24, 1.0).waiting) == 2
        for job in archive.outbox.due("PACS", time.time() + 10, 10):
            archive.outbox.mark_done(job, time.time())
        decision = commitments.decide(archive.index, tx, "forwarded", 24, 1.0)
        assert decision.settled and len(decision.committed) == 2
        # delivered is not enough for "pacs-committed": the PACS must have committed it too
        assert len(commitments.decide(archive.index, tx, "pacs-committed", 24, 1.0).waiting) == 2
        first, second = pairs
        for sop_class, sop_uid in pairs:
            archive.pacs_commits.delivered(sop_uid, sop_class, "PACS", 1.0)
        archive.pacs_commits.requested([first[1], second[1]], "PACS", "1.2.11", 2.0)
        archive.pacs_commits.settle("1.2.11", [first[1]], {second[1]: 0x0112}, "PACS", 3.0)
        decision = commitments.decide(archive.index, tx, "pacs-committed", 24, 1.0)
        assert decision.committed == [first] and decision.waiting == [second]
    finally:
        archive.close()


# over the network


def test_orthanc_gets_its_report(tmp_path: Path, instances: list[Dataset],
                                 running: list[Agent]) -> None:
    agent_port = free_port()
    modalities = {"edge": {"AET": "EDGE", "Host": "127.0.0.1", "Port": agent_port,
                           "AllowStorageCommitment": True}}
    with Orthanc(tmp_path / "orthanc", modalities=modalities) as orthanc:
        path = make_config(tmp_path, orthanc.port, ("echo", "store", "commit"))
        path.write_text(path.read_text().replace(f'ae_title = "{MOD_AE}"',
                                                 f'ae_title = "{orthanc.ae_title}"'))
        text = path.read_text().splitlines()
        text = [f"port = {agent_port}" if line.startswith("port = ") and i < 6 else line
                for i, line in enumerate(text)]
        path.write_text("\n".join(text) + "\n")
        start(path, running)
        ids = []
        for n, ds in enumerate(instances):
            source = tmp_path / f"{n}.dcm"
            ds.save_as(source, enforce_file_format=True)
            ids.append(orthanc.rest("/instances", source.read_bytes())["ID"])
        orthanc.rest("/modalities/edge/store", _json({"Resources": ids, "Synchronous": True}))
        asked = [{"SOPClassUID": str(ds.SOPClassUID), "SOPInstanceUID": str(ds.SOPInstanceUID)}
                 for ds in instances]
        job = orthanc.rest("/modalities/edge/storage-commitment", _json({"DicomInstances": asked}))
        report = wait_until(lambda: _settled(orthanc, job["ID"]), 30, "Orthanc's report")
        assert report["Status"] == "Success"
        assert len(report["Success"]) == 2
        missing = [{"SOPClassUID": str(instances[0].SOPClassUID), "SOPInstanceUID": "1.2.3.99"}]
        job = orthanc.rest("/modalities/edge/storage-commitment",
                           _json({"DicomInstances": missing}))
        report = wait_until(lambda: _settled(orthanc, job["ID"]), 30, "the failure report")
        assert report["Status"] == "Failure"
        assert report["Failures"][0]["FailureReason"] == NO_SUCH_OBJECT_INSTANCE


def _json(value: Any) -> bytes:
    import json

    return json.dumps(value).encode()


def _settled(orthanc: Orthanc, transaction: str) -> Any:
    report = orthanc.rest(f"/storage-commitment/{transaction}")
    return report if report.get("Status") != "Pending" else None


def test_a_transaction_survives_a_restart(tmp_path: Path, instances: list[Dataset],
                                          running: list[Agent],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(commitment, "RETRY_FIRST", 0.2)
    monkeypatch.setattr(commitment, "RETRY_MAX", 0.5)
    report_port = free_port()  # nothing listens there yet: the modality is "down"
    path = make_config(tmp_path, report_port, ("echo", "store", "commit"))
    agent = start(path, running)
    store(agent.config.agent.port, instances[:1])
    pairs = [(str(instances[0].SOPClassUID), str(instances[0].SOPInstanceUID)),
             (str(instances[0].SOPClassUID), "1.2.3.77")]
    uid = generate_uid()
    assert request(agent.config.agent.port, uid, pairs) == (True, 0x0000)
    assert agent.archive is not None
    wait_until(lambda: commitments.due(agent.archive.index, time.time() + 60)[0].attempts > 0,  # type: ignore[union-attr]
               10, "a failed report attempt")
    agent.close()
    running.remove(agent)
    start(path, running)
    catcher = ReportCatcher(report_port)
    try:
        assert catcher.arrived.wait(20), "no report after the restart"
        event_type, info = catcher.reports[0]
        assert event_type == 2 and info.TransactionUID == uid
        assert info.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == pairs[0][1]
        failed = info.FailedSOPSequence[0]
        assert (failed.ReferencedSOPInstanceUID, failed.FailureReason) == (
            "1.2.3.77", NO_SUCH_OBJECT_INSTANCE)
        wait_until(lambda: running[-1].status.snapshot().commit_reports_sent == 1, 10)
    finally:
        catcher.close()


def test_a_peer_not_allowed_commit_is_not_offered_it(tmp_path: Path,
                                                     running: list[Agent]) -> None:
    path = make_config(tmp_path, free_port(), ("echo", "store"))
    agent = start(path, running)
    assert request(agent.config.agent.port, generate_uid(), [("1.2.3", "1.2.3.4")]) == (
        False, None)


def test_invalid_requests_are_answered_with_a_failure(tmp_path: Path,
                                                      running: list[Agent]) -> None:
    path = make_config(tmp_path, free_port(), ("echo", "store", "commit"))
    agent = start(path, running)
    accepted, status = request(agent.config.agent.port, "not a uid", [("1.2.3", "1.2.4")])
    assert accepted and status == 0x0115


class _Event:
    """What the handler reads of pynetdicom's EVT_N_ACTION event."""

    def __init__(self, action: int, info: Dataset | None) -> None:
        self.assoc = object()
        self.request = Dataset()
        self.request.RequestedSOPClassUID = STORAGE_COMMITMENT
        self.request.ActionTypeID = action
        self.action_information = info


def test_each_request_is_judged_by_the_rights_now(tmp_path: Path) -> None:
    from agent.config import Peer
    from agent.net.access import Caller

    archive = Archive(tmp_path / "data")
    try:
        rights: list[frozenset[str]] = [frozenset({"commit"})]
        peer = Peer("MODALITY", MOD_AE, "127.0.0.1", 104)

        def caller_now(_assoc: object) -> Caller:
            return Caller(MOD_AE, "127.0.0.1", peer, rights[0])

        handler = commitment.CommitmentHandler(archive, caller_now)
        good = Dataset()
        good.TransactionUID = generate_uid()
        good.ReferencedSOPSequence = [reference("1.2.3", "1.2.3.4")]
        assert handler.on_n_action(_Event(2, good)) == (0x0123, None)
        assert handler.on_n_action(_Event(1, Dataset())) == (0x0115, None)
        assert handler.on_n_action(_Event(1, good)) == (0x0000, None)
        assert handler.on_n_action(_Event(1, good)) == (0x0000, None)  # a retry
        good.ReferencedSOPSequence = [reference("1.2.3", "1.2.3.5")]
        assert handler.on_n_action(_Event(1, good)) == (0x0131, None)  # same UID, other data
        rights[0] = frozenset({"echo", "store"})  # a reload took "commit" away
        good.TransactionUID = generate_uid()
        assert handler.on_n_action(_Event(1, good)) == (0x0124, None)
        assert commitments.counts(archive.index)[commitments.PENDING] == 1
    finally:
        archive.close()


def test_pacs_committed_needs_a_destination_that_is_asked() -> None:
    modality = {"ae_title": MOD_AE, "host": "127.0.0.1", "port": 104,
                "allow": ["store", "commit"], "commit_when": "pacs-committed"}
    pacs = {"ae_title": "PACS", "host": "127.0.0.1", "port": 104}
    raw = {"peers": {"MODALITY": modality, "PACS": pacs}, "forward": {"to": ["PACS"]}}
    with pytest.raises(ConfigError, match=r"peers\.MODALITY\.commit_when.*commit = true"):
        config_module.parse(raw)
    raw["peers"]["PACS"] = {**pacs, "commit": True}
    assert config_module.parse(raw).peers["MODALITY"].commit_when == "pacs-committed"
