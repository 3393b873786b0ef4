"""MPPS forwarding (forward.mpps_to): a pynetdicom MPPS SCP plays the RIS, the modality
is pynetdicom too, the agent runs in this process."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt

from agent.app import Agent
from agent.archive import mpps
from agent.dicom.contexts import MPPS
from agent.forward.mpps import classify
from agent.forward.policy import Delivery
from tests.mpps_peers import MOD_AE, Modality, creation, ending, start
from tests.support import free_port, wait_until, write_config

RIS_AE = "RIS"


class Ris:
    """An MPPS SCP that records each N-CREATE and N-SET and answers from ``answers``
    (N-CREATE statuses, in turn; Success once they run out)."""

    def __init__(self, port: int, answers: list[int] | None = None) -> None:
        self.port = port
        self.answers = list(answers or [])
        self.received: list[tuple[str, str, Dataset]] = []
        self.changed = threading.Condition()
        self.server: Any = None

    def start(self) -> Ris:
        ae = AE(ae_title=RIS_AE)
        ae.add_supported_context(MPPS)
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=[
            (evt.EVT_N_CREATE, self._on_create), (evt.EVT_N_SET, self._on_set)])
        return self

    def _took(self, kind: str, uid: str, ds: Dataset) -> None:
        with self.changed:
            self.received.append((kind, uid, ds))
            self.changed.notify_all()

    def _on_create(self, event: Any) -> tuple[int, None]:
        self._took("N-CREATE", str(event.request.AffectedSOPInstanceUID), event.attribute_list)
        return (self.answers.pop(0) if self.answers else 0x0000), None

    def _on_set(self, event: Any) -> tuple[int, None]:
        self._took("N-SET", str(event.request.RequestedSOPInstanceUID), event.modification_list)
        return 0x0000, None

    def wait_for(self, count: int, timeout: float = 30.0) -> list[tuple[str, str, Dataset]]:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.received) >= count, timeout), (
                f"the RIS got {len(self.received)} messages, not {count}")
            return list(self.received)

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()


@pytest.fixture
def ris() -> Iterator[list[Ris]]:
    """RIS peers a test starts; each stopped after it."""
    started: list[Ris] = []
    yield started
    for each in started:
        each.close()


def make_config(tmp_path: Path, ris_port: int) -> Path:
    path = write_config(
        tmp_path / "agent.toml",
        {"ae_title": "EDGE", "port": free_port(), "bind": "127.0.0.1",
         "data_dir": str(tmp_path / "data"), "min_free_mb": 0},
        {"MODALITY": {"ae_title": MOD_AE, "host": "127.0.0.1", "port": 104,
                      "allow": ["echo", "mpps"]},
         "RIS": {"ae_title": RIS_AE, "host": "127.0.0.1", "port": ris_port, "allow": ["echo"]}},
    )
    path.write_text(path.read_text() + '\n[forward]\nmpps_to = ["RIS"]\nretry_first = 0.1\n'
                    "retry_max = 0.3\npermanent_tries = 2\n")
    return path


def procedure(port: int) -> tuple[str, list[str]]:
    """The modality's N-CREATE and final N-SET; the step's UID and its instances."""
    uid, images = generate_uid(), [generate_uid(), generate_uid()]
    modality = Modality(port)
    try:
        assert modality.create(creation(generate_uid()), uid).Status == 0x0000
        assert modality.set(ending("COMPLETED", images, []), uid).Status == 0x0000
    finally:
        modality.close()
    return uid, images


def jobs(agent: Agent) -> list[mpps.Job]:
    assert agent.archive is not None
    return mpps.jobs(agent.archive.index)


def test_a_ris_down_gets_both_in_order_after_a_restart(tmp_path: Path, running: list[Agent],
                                                       ris: list[Ris]) -> None:
    ris_port = free_port()  # nothing listens there yet: the RIS is down
    path = make_config(tmp_path, ris_port)
    agent = start(path, running)
    uid, images = procedure(agent.config.agent.port)
    wait_until(lambda: [j.attempts > 0 for j in jobs(agent)] == [True, False], 20,
               "a failed attempt to reach the RIS, its N-SET waiting behind it")
    agent.close()
    running.remove(agent)
    again = start(path, running)
    ris.append(Ris(ris_port).start())
    received = ris[0].wait_for(2)
    assert [(kind, step) for kind, step, _ds in received] == [("N-CREATE", uid), ("N-SET", uid)]
    created, completed = received[0][2], received[1][2]
    assert created.PatientName == "Müller^Jörg" and created.PerformedProcedureStepStatus == (
        "IN PROGRESS")
    assert completed.PerformedProcedureStepStatus == "COMPLETED"
    series = completed.PerformedSeriesSequence[0]
    assert [r.ReferencedSOPInstanceUID for r in series.ReferencedImageSequence] == images
    wait_until(lambda: jobs(again) == [], 10, "the queue to empty")


def test_an_n_set_never_overtakes_its_n_create(tmp_path: Path, running: list[Agent],
                                               ris: list[Ris]) -> None:
    ris_port = free_port()
    ris.append(Ris(ris_port, answers=[0xA700, 0xA700]).start())  # busy twice, then takes it
    agent = start(make_config(tmp_path, ris_port), running)
    uid, _images = procedure(agent.config.agent.port)
    received = ris[0].wait_for(4)
    assert [(kind, step) for kind, step, _ds in received] == (
        [("N-CREATE", uid)] * 3 + [("N-SET", uid)])
    wait_until(lambda: jobs(agent) == [], 10, "the queue to empty")


def test_a_permanent_refusal_quarantines_the_step(tmp_path: Path, running: list[Agent],
                                                  ris: list[Ris]) -> None:
    ris_port = free_port()
    ris.append(Ris(ris_port, answers=[0x0106] * 5).start())  # it never takes the step
    agent = start(make_config(tmp_path, ris_port), running)
    uid, _images = procedure(agent.config.agent.port)
    wait_until(lambda: [j.state for j in jobs(agent)] == [mpps.QUARANTINED] * 2, 20,
               "the step quarantined")
    held = jobs(agent)
    assert [(j.kind, j.step_uid, j.state) for j in held] == [
        ("N-CREATE", uid, mpps.QUARANTINED), ("N-SET", uid, mpps.QUARANTINED)]
    assert held[0].attempts == 2 and "0x0106" in (held[0].last_error or "")
    assert held[1].attempts == 0  # never sent: its N-CREATE was not taken
    assert [kind for kind, _uid, _ds in ris[0].received] == ["N-CREATE", "N-CREATE"]


def test_outcomes_follow_the_instances_policy() -> None:
    assert classify("N-CREATE", 0x0000, None) is Delivery.DELIVERED
    assert classify("N-CREATE", 0x0111, None) is Delivery.DELIVERED_WITH_WARNING  # a retry
    assert classify("N-SET", 0x0111, None) is Delivery.PERMANENT
    assert classify("N-SET", 0x0110, 0xA710) is Delivery.PERMANENT  # final there already
    assert classify("N-SET", 0x0110, None) is Delivery.TRANSIENT
    assert classify("N-CREATE", 0xA700, None) is Delivery.TRANSIENT
    assert classify("N-CREATE", 0x0124, None) is Delivery.PERMANENT
    assert classify("N-SET", 0x0120, None) is Delivery.PERMANENT
