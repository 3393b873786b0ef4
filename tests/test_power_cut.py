"""A power cut keeps every promise: on a file system that forgets whatever nobody synced
(tests/lazyfs.py, a stand-in for Jepsen's LazyFS), the agent is killed mid-work and the
disk keeps only what was synced; the agent restarted on what survived still owes the
modality its commitment report, routes by the calling AE and keeps the conflict."""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Iterator
from copy import deepcopy
from pathlib import Path
from typing import Any

import dicomgen
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from agent import config as config_module
from agent.archive.index import connect
from tests import scu
from tests.commitment_peers import (
    MOD_AE,
    ReportCatcher,
    ReportingOrthanc,
    pacs_states,
    request,
    store,
)
from tests.lazyfs import LazyMount
from tests.support import AgentProcess, free_port, peer, wait_until, write_config
from tests.test_storage import assert_identical

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not Path("/dev/fuse").exists(),
                                reason="mounting a FUSE file system needs root and /dev/fuse")


class Box:
    """An agent on the lazy file system, booted again after each cut (its log kept off
    that disk, which a cut would take)."""

    def __init__(self, tmp_path: Path, pacs: dict[str, Any] | None = None) -> None:
        self.state, self.mountpoint = tmp_path / "disk", tmp_path / "mnt"
        self.data_dir = self.mountpoint / "data"
        self.mod_port = free_port()  # where the modality takes its commitment reports
        self.config = make_config(tmp_path, self.data_dir, self.mod_port, pacs)
        self.port = config_module.load_file(self.config).agent.port
        self.tmp_path = tmp_path
        self.mount: LazyMount | None = None
        self.agent: AgentProcess | None = None

    def boot(self) -> None:
        """Mount what the disk holds and start the agent on it."""
        self.mount = LazyMount(self.state, self.mountpoint, self.tmp_path / "lazyfs.log")
        self.agent = AgentProcess(self.config, self.data_dir)
        self.agent.log = self.tmp_path / "agent.log"
        self.agent.start()

    def cut(self) -> None:
        """Power off: every process of the agent dies at once, unsynced writes are lost."""
        self._kill()
        assert self.mount is not None
        self.mount.cut()
        self.mount = None

    def _kill(self) -> None:
        proc = None if self.agent is None else self.agent.proc
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the agent and its forwarding process
            proc.wait(10)

    def close(self) -> None:
        self._kill()
        if self.mount is not None:
            self.mount.close()


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Box]:
    made = Box(tmp_path)
    yield made
    made.close()


FORWARD = """
[forward]
to = ["PACS", "MODALITY"]   # never back to the sender: MOD's instances skip MODALITY

[[forward.rules]]
to = ["RESEARCH"]
match = { calling_ae = "MOD" }
when = "complete"           # held until the study is complete (issue 21 item 4)
"""


def make_config(tmp_path: Path, data_dir: Path, mod_port: int,
                pacs: dict[str, Any] | None) -> Path:
    """The modality (which asks for commitment), PACS (nobody listening, unless given)
    and RESEARCH (nobody listening)."""
    path = write_config(
        tmp_path / "agent.toml",
        {"ae_title": "EDGE", "port": free_port(), "bind": "127.0.0.1",
         "data_dir": str(data_dir), "min_free_mb": 0},
        {"MODALITY": peer(MOD_AE, mod_port, ("echo", "store", "commit")),
         "PACS": pacs or peer("PACS", free_port()), "RESEARCH": peer("RESEARCH", free_port())},
    )
    path.write_text(path.read_text() + FORWARD)
    return path


def read_index(data_dir: Path, sql: str) -> list[tuple[object, ...]]:
    """Rows of the agent's index, read as another process would."""
    conn = connect(data_dir / "index.sqlite", readonly=True)
    try:
        return list(conn.execute(sql))
    finally:
        conn.close()


def changed_copy(ds: Dataset) -> Dataset:
    """Different content under the same SOP Instance UID: a conflict."""
    copy = deepcopy(ds)
    copy.StudyDescription = "another content"
    return copy


@pytest.mark.slow
def test_after_a_power_cut_the_commitment_routes_and_conflict_survive(box: Box) -> None:
    instances = list(dicomgen.series(4, size=8))
    pairs = [(str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in instances]
    transaction = generate_uid()
    box.boot()
    store(box.port, [*instances, changed_copy(instances[0])])
    assert request(box.port, transaction, pairs) == (True, 0)  # recorded, then answered
    box.cut()  # before the report: the modality was not listening yet

    catcher = ReportCatcher(box.mod_port)
    try:
        box.boot()
        assert catcher.arrived.wait(60), "the commitment report the agent owed never came"
        [(event_type, report)] = catcher.reports
        assert (event_type, str(report.TransactionUID)) == (1, transaction)
        assert {str(i.ReferencedSOPInstanceUID) for i in report.ReferencedSOPSequence} == {
            uid for _, uid in pairs}
    finally:
        catcher.close()
    routes = read_index(box.data_dir, "SELECT SOPInstanceUID, destination FROM forward_jobs")
    assert sorted(routes) == sorted((uid, d) for _, uid in pairs for d in ("PACS", "RESEARCH"))
    # the request completed the study and released RESEARCH's jobs in its own transaction
    assert read_index(box.data_dir, "SELECT DISTINCT state FROM forward_jobs"
                      " WHERE destination = 'RESEARCH'") == [("pending",)]
    assert read_index(box.data_dir, "SELECT DISTINCT calling_ae FROM instances") == [(MOD_AE,)]
    assert read_index(box.data_dir, "SELECT SOPInstanceUID, calling_ae FROM conflicts") == [
        (pairs[0][1], MOD_AE)]


@pytest.mark.slow
def test_after_a_power_cut_what_the_pacs_committed_stays_committed(tmp_path: Path) -> None:
    pacs_port = free_port()
    pacs = peer(ReportingOrthanc.ae_title, pacs_port, ("echo",))
    pacs.update(commit=True, commit_after_seconds=0.2, commit_report_timeout=2)
    box = Box(tmp_path, pacs)
    instances = list(dicomgen.series(3, size=8))
    uids = {str(ds.SOPInstanceUID) for ds in instances}

    def committed() -> set[str]:
        states = pacs_states(box.data_dir)
        return {uid for uid, (state, *_rest) in states.items() if state == "committed"}

    try:
        with ReportingOrthanc(tmp_path / "orthanc", "EDGE", box.port, port=pacs_port):
            box.boot()
            store(box.port, instances)
            wait_until(lambda: committed() == uids, 60, "Orthanc's report, acknowledged")
        box.cut()  # with Orthanc gone, nothing could commit them again after the boot
        box.boot()
        assert committed() == uids
    finally:
        box.close()


@pytest.mark.slow
def test_power_cuts_during_a_store_lose_no_acknowledged_instance(
        box: Box, tmp_path: Path) -> None:
    sent = dicomgen.write_series(tmp_path / "sent", 80, size=16)
    chance = random.Random(15)
    acknowledged: list[Path] = []
    for _ in range(5):
        box.boot()
        cut_after = len(acknowledged) + chance.randint(1, 15)

        def cut_at_random(path: Path, status: int, cut_after: int = cut_after) -> None:
            if status == 0:
                acknowledged.append(path)
            if len(acknowledged) == cut_after and box.mount is not None:
                box.cut()

        scu.store(box.port, sent, calling_ae=MOD_AE, after_each=cut_at_random)
    box.boot()
    assert_identical(acknowledged, box.data_dir)
    indexed = dict(read_index(box.data_dir, "SELECT SOPInstanceUID, calling_ae FROM instances"))
    assert {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in acknowledged} <= (
        set(indexed))
    assert set(indexed.values()) == {MOD_AE}  # routed by its sender, even if the row was lost
    # its study's count was written with each row: exact after every cut (issue 21)
    assert read_index(box.data_dir, "SELECT received FROM study_state") == [(len(indexed),)]


@pytest.mark.slow
def test_a_power_cut_before_its_study_is_complete_sends_nothing_early(box: Box) -> None:
    instances = list(dicomgen.series(3, size=8))
    pairs = [(str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in instances]
    box.boot()
    store(box.port, instances)  # indexed without a sync of its own: the cut may take rows
    box.cut()
    box.boot()  # recovery indexes and routes them again from their files

    def research() -> list[tuple[object, ...]]:
        return read_index(box.data_dir, "SELECT SOPInstanceUID, state FROM forward_jobs"
                          " WHERE destination = 'RESEARCH' ORDER BY SOPInstanceUID")

    assert research() == sorted((uid, "held") for _, uid in pairs)  # kept, still held
    assert request(box.port, generate_uid(), pairs) == (True, 0)  # the study is complete
    box.cut()
    box.boot()
    assert research() == sorted((uid, "pending") for _, uid in pairs)  # the release kept
