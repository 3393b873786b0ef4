"""Acting per study (issue 21 item 4): with ``forward.when = "complete"`` an instance's
jobs are held until its study is complete, then the whole study goes over one
association in series and instance order, a re-opened study sends only what is new, and
a ``commit = true`` destination is asked once per study. Real peers: pynetdicom as the
modality (MPPS and C-STORE) and as the PACS (Storage SCP counting its associations, and
a Storage Commitment SCP), the agent as it runs; study timers on an injected clock."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dicomgen
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import (
    StorageCommitmentPushModel,  # type: ignore[attr-defined]
    StorageCommitmentPushModelInstance,  # type: ignore[attr-defined]
)

from agent import config as config_module
from agent.app import Agent
from agent.archive import Layout
from agent.errors import ConfigError, ConfigErrors
from agent.forward.rules import ConfiguredRouting
from agent.ops.queue import list_queue
from tests.commitment_peers import pacs_states, store
from tests.mpps_peers import MOD_AE, Modality, creation, ending
from tests.support import free_port, wait_until, write_config
from tests.test_forward import jobs
from tests.test_studies import FakeClock, start, study, tick

QUIET = 10.0


class PACS:
    """A pynetdicom Storage SCP (and Storage Commitment SCP, reporting on the request's
    association) that records what it got, on which association, and every N-ACTION."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received: list[tuple[int, int, str]] = []  # (series, instance number, SOP UID)
        self.carried_by: list[int] = []  # the association of each received instance
        self.accepted = 0  # associations accepted (EVT_ACCEPTED)
        self.actions: list[list[str]] = []  # the SOP Instance UIDs of each N-ACTION
        self.responded = threading.Event()  # the N-ACTION's response went: report now
        self.port = free_port()
        ae = AE(ae_title="PACS")
        ae.supported_contexts = AllStoragePresentationContexts
        ae.add_supported_context(StorageCommitmentPushModel)
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=[
            (evt.EVT_C_STORE, self._on_store), (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_N_ACTION, self._on_action), (evt.EVT_DIMSE_SENT, self._on_sent)])

    def _on_accepted(self, event: Any) -> None:
        with self.lock:
            self.accepted += 1

    def _on_store(self, event: Any) -> int:
        ds = event.dataset
        with self.lock:
            self.received.append(
                (int(ds.SeriesNumber), int(ds.InstanceNumber), str(ds.SOPInstanceUID)))
            self.carried_by.append(id(event.assoc))
        return 0x0000

    def _on_action(self, event: Any) -> tuple[int, None]:
        info = event.action_information
        with self.lock:
            self.actions.append([str(i.ReferencedSOPInstanceUID)
                                 for i in info.ReferencedSOPSequence])
            self.responded.clear()
        threading.Thread(target=self._report, args=(event.assoc, info), daemon=True).start()
        return 0x0000, None

    def _on_sent(self, event: Any) -> None:
        if type(event.message).__name__ == "N_ACTION_RSP":
            self.responded.set()

    def _report(self, assoc: Any, info: Dataset) -> None:
        """Every instance committed, on the request's own association."""
        self.responded.wait(10)
        result = Dataset()
        result.TransactionUID = info.TransactionUID
        result.ReferencedSOPSequence = info.ReferencedSOPSequence
        assoc.send_n_event_report(
            result, 1, StorageCommitmentPushModel, StorageCommitmentPushModelInstance)

    def uids(self) -> list[str]:
        with self.lock:
            return [uid for _, _, uid in self.received]

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def pacs() -> Iterator[PACS]:
    scp = PACS()
    yield scp
    scp.close()


def make_config(tmp_path: Path, pacs: PACS, when: str = "complete", commit: bool = False,
                dead: bool = False) -> Path:
    """An agent whose modality may store and send MPPS, forwarding to PACS ``when`` (and,
    with ``dead``, to DEAD too, where nothing listens)."""
    destination: dict[str, Any] = {"ae_title": "PACS", "host": "127.0.0.1",
                                   "port": pacs.port, "allow": ["echo"]}
    if commit:  # per instance, it would ask every 2 instances
        destination.update(commit=True, commit_after_instances=2, commit_after_seconds=0.2)
    peers = {"MODALITY": {"ae_title": MOD_AE, "host": "127.0.0.1", "port": 104,
                          "allow": ["echo", "store", "mpps"]},
             "PACS": destination}
    if dead:
        peers["DEAD"] = {"ae_title": "DEAD", "host": "127.0.0.1", "port": free_port(),
                         "allow": ["echo"]}
    path = write_config(
        tmp_path / "agent.toml",
        {"ae_title": "EDGE", "port": free_port(), "bind": "127.0.0.1",
         "data_dir": str(tmp_path / "data"), "min_free_mb": 0}, peers)
    to = '["PACS", "DEAD"]' if dead else '["PACS"]'
    path.write_text(path.read_text() + f'\n[forward]\nto = {to}\nwhen = "{when}"\n'
                    "retry_first = 0.2\nretry_max = 0.5\n"
                    f"\n[study]\nquiet_seconds = {QUIET}\ngive_up_hours = 1\n")
    return path


def two_series(exam: dicomgen.Study, first: int, second: int) -> list[Dataset]:
    """A study's instances in a scanner's muddled sending order: series 2 first, each
    series backwards."""
    one = list(dicomgen.series(first, study=exam, size=8))
    two = list(dicomgen.series(second, study=exam, size=8))
    for ds in two:
        ds.SeriesNumber = 2
    return list(reversed(two)) + list(reversed(one))


def states(agent: Agent) -> list[str]:
    return sorted(set(jobs(agent.config.agent.data_dir).values()))


def in_order(pacs: PACS) -> bool:
    with pacs.lock:
        keys = [(series, number) for series, number, _ in pacs.received]
    return keys == sorted(keys)


def test_an_mpps_study_goes_after_completion_over_one_association_in_order(
        tmp_path: Path, running: list[Agent], pacs: PACS) -> None:
    agent = start(make_config(tmp_path, pacs), FakeClock(1000.0), running)
    port = agent.config.agent.port
    exam = dicomgen.Study()
    images = two_series(exam, 4, 3)
    uids = [str(ds.SOPInstanceUID) for ds in images]
    step = generate_uid()
    modality = Modality(port)
    try:
        assert modality.create(creation(exam.study_uid), step).Status == 0x0000
        store(port, images)
        assert states(agent) == ["held"]  # queued, but nothing may go yet
        listing = list_queue(Layout(agent.config.agent.data_dir))
        assert "PACS: 0 pending, 0 retrying, 0 quarantined, 7 held until their study" \
               " is complete" in listing.lines()
        wait_until(lambda: [(d.held, d.quarantined) for d in agent.status.snapshot()
                            .destinations] == [(7, 0)], 20, "status shows 7 held")
        assert "7 held for their study" in agent.status.snapshot().summary()
        assert study(agent, exam.study_uid)["forwarding"] == {"PACS": {"held": 7}}
        assert pacs.uids() == []
        assert modality.set(ending("COMPLETED", uids, []), step).Status == 0x0000
    finally:
        modality.close()
    assert study(agent, exam.study_uid)["state"] == "complete"
    wait_until(lambda: len(pacs.uids()) == 7, 30, "the study at the PACS")
    assert sorted(pacs.uids()) == sorted(uids)
    assert pacs.accepted == 1 and len(set(pacs.carried_by)) == 1  # one association
    assert in_order(pacs)
    # the last job is marked done just after its C-STORE answer
    wait_until(lambda: states(agent) == ["done"], 30, "every job done")


def test_a_study_longer_than_a_batch_with_a_later_series_of_another_class_goes_whole(
        tmp_path: Path, running: list[Agent], pacs: PACS) -> None:
    """The association offers every class the study's due jobs need, not only the first
    batch's (sender.BATCH = 200): one association still carries the study."""
    clock = FakeClock(1000.0)
    agent = start(make_config(tmp_path, pacs), clock, running)
    exam = dicomgen.Study()
    images = list(dicomgen.series(201, study=exam, size=8))
    mr = list(dicomgen.series(2, study=exam, size=8, modality="MR"))
    for ds in mr:
        ds.SeriesNumber = 2
    assert mr[0].SOPClassUID != images[0].SOPClassUID
    store(agent.config.agent.port, mr + images)
    tick(agent)
    clock.now += QUIET
    tick(agent)
    wait_until(lambda: len(pacs.uids()) == 203, 60, "the study at the PACS")
    assert pacs.accepted == 1 and in_order(pacs)


def test_quiet_completion_sends_once_and_a_reopened_study_only_what_is_new(
        tmp_path: Path, running: list[Agent], pacs: PACS) -> None:
    clock = FakeClock(1000.0)
    agent = start(make_config(tmp_path, pacs), clock, running)
    port = agent.config.agent.port
    exam = dicomgen.Study()
    images = two_series(exam, 4, 3)
    store(port, images[:3])
    tick(agent)
    clock.now += QUIET - 5  # a shorter gap than the quiet period: the same study
    store(port, images[3:])
    tick(agent)
    clock.now += QUIET - 1
    tick(agent)
    assert states(agent) == ["held"] and pacs.uids() == []
    clock.now += 1
    tick(agent)
    assert study(agent, exam.study_uid)["reason"] == "quiet"
    wait_until(lambda: states(agent) == ["done"], 30, "the study delivered")
    assert sorted(pacs.uids()) == sorted(str(ds.SOPInstanceUID) for ds in images)
    assert pacs.accepted == 1 and in_order(pacs)  # two bursts, forwarded once
    clock.now += 100.0  # a long gap: the late instances re-open the study
    late = [ds for ds in dicomgen.series(2, study=exam, size=8)]
    for ds in late:
        ds.SeriesNumber = 3
    store(port, late)
    assert study(agent, exam.study_uid)["state"] == "reopened"
    assert sorted(jobs(agent.config.agent.data_dir).values()) == ["done"] * 7 + ["held"] * 2
    tick(agent)
    clock.now += QUIET
    tick(agent)
    wait_until(lambda: states(agent) == ["done"], 30, "the late instances delivered")
    assert pacs.uids()[7:] == [str(ds.SOPInstanceUID) for ds in late]  # only what is new
    assert len(pacs.uids()) == 9  # nothing sent twice


def test_a_restart_in_the_middle_loses_nothing_and_sends_nothing_early(
        tmp_path: Path, running: list[Agent], pacs: PACS) -> None:
    config = make_config(tmp_path, pacs)
    first = start(config, FakeClock(1000.0), running)
    exam = dicomgen.Study()
    images = two_series(exam, 3, 2)
    store(first.config.agent.port, images)
    tick(first)
    first.close()
    running.remove(first)
    clock = FakeClock(50.0)  # a new boot
    second = start(config, clock, running)
    tick(second)
    clock.now += QUIET - 1
    tick(second)
    assert states(second) == ["held"] and pacs.uids() == []  # kept, and still held
    clock.now += 1
    tick(second)
    wait_until(lambda: len(pacs.uids()) == 5, 30, "the study after the restart")
    assert pacs.accepted == 1 and in_order(pacs)


def test_commitment_is_asked_once_per_complete_study(
        tmp_path: Path, running: list[Agent], pacs: PACS) -> None:
    clock = FakeClock(1000.0)
    agent = start(make_config(tmp_path, pacs, commit=True), clock, running)
    port = agent.config.agent.port
    exam = dicomgen.Study()
    images = two_series(exam, 3, 3)
    wanted = {str(ds.SOPInstanceUID) for ds in images}
    store(port, images)
    tick(agent)
    clock.now += QUIET
    tick(agent)
    data = agent.config.agent.data_dir
    wait_until(lambda: set(pacs_states(data)) == wanted
               and {s for s, _, _ in pacs_states(data).values()} == {"committed"},
               30, "the study committed")
    assert len(pacs.actions) == 1 and sorted(pacs.actions[0]) == sorted(wanted)


def test_a_destination_that_is_down_delays_only_its_own_copy_of_the_study(
        tmp_path: Path, running: list[Agent], pacs: PACS) -> None:
    clock = FakeClock(1000.0)
    agent = start(make_config(tmp_path, pacs, dead=True), clock, running)
    exam = dicomgen.Study()
    images = two_series(exam, 3, 2)
    store(agent.config.agent.port, images)
    tick(agent)
    clock.now += QUIET
    tick(agent)
    wait_until(lambda: len(pacs.uids()) == 5, 30, "the study at the live PACS")
    assert pacs.accepted == 1 and in_order(pacs)

    def states(name: str) -> set[str]:
        found = jobs(agent.config.agent.data_dir)
        return {state for key, state in found.items() if key.endswith(f" {name}")}

    # the last job is marked done just after its C-STORE answer
    wait_until(lambda: states("PACS") == {"done"}, 30, "every job to PACS done")
    by_destination = jobs(agent.config.agent.data_dir)
    assert {state for key, state in by_destination.items() if key.endswith(" DEAD")} <= {
        "pending", "retrying"}  # released, waiting for DEAD to come up


def test_when_instance_stays_the_default_and_sends_at_once(
        tmp_path: Path, running: list[Agent], pacs: PACS) -> None:
    agent = start(make_config(tmp_path, pacs, when="instance"), FakeClock(1000.0), running)
    exam = dicomgen.Study()
    store(agent.config.agent.port, two_series(exam, 2, 1))
    wait_until(lambda: len(pacs.uids()) == 3, 30, "each instance forwarded as it came")
    assert study(agent, exam.study_uid)["state"] == "arriving"


def test_when_is_validated_and_errors_name_the_key() -> None:
    peers = {"PACS": {"ae_title": "PACS", "host": "h", "port": 104},
             "RESEARCH": {"ae_title": "R", "host": "h", "port": 104}}
    default = config_module.parse({"peers": peers, "forward": {"to": ["PACS"]}})
    assert default.forward.when == "instance"
    config = config_module.parse({"peers": peers, "forward": {
        "to": ["PACS"], "when": "complete",
        "rules": [{"to": ["RESEARCH"], "match": {"Modality": "MR"}},
                  {"to": ["RESEARCH"], "match": {"Modality": "CT"}, "when": "instance"}]}})
    assert config.forward.when == "complete"
    assert [rule.when for rule in config.forward.rules] == ["complete", "instance"]
    for forward, key in (
        ({"to": ["PACS"], "when": "later"}, "forward.when"),
        ({"to": ["PACS"], "when": 1}, "forward.when"),
        ({"rules": [{"to": ["PACS"], "match": {}, "when": "sometimes"}]},
         "forward.rules[0].when"),
    ):
        with pytest.raises((ConfigError, ConfigErrors)) as caught:
            config_module.parse({"peers": peers, "forward": forward})
        assert key in str(caught.value)


def test_the_first_that_names_a_destination_decides_when_it_goes() -> None:
    peers = {name: {"ae_title": name, "host": "h", "port": 104}
             for name in ("PACS", "RESEARCH", "AI")}
    config = config_module.parse({"peers": peers, "forward": {
        "to": ["PACS"], "rules": [
            {"to": ["RESEARCH"], "match": {"Modality": "CT"}, "when": "complete"},
            {"to": ["PACS", "AI", "RESEARCH"], "match": {}, "when": "complete"}]}})
    routing = ConfiguredRouting(lambda: config)
    ct, mr = Dataset(), Dataset()
    ct.Modality, mr.Modality = "CT", "MR"
    assert routing.destinations(ct, "CT1") == ("PACS", "RESEARCH", "AI")
    assert routing.per_study(ct, "CT1") == {"RESEARCH", "AI"}  # PACS: forward.when
    assert routing.per_study(mr, "MR1") == {"RESEARCH", "AI"}
