"""What a clock the box cannot trust changes: age-based retention waits for a trusted
clock while the free-space floor still frees space (the earliest arrived first, never
anything undelivered), arrivals are flagged, and a jump re-bases every schedule the index
keeps in wall time instead of firing it at once or putting it off by the jump.

The clock's trust is set on the status model directly (``agent.timekeeping`` judges it in
the running agent; ``Agent.judges_clock = False`` leaves it to the test), jumps are
handed to the re-basing as the judge would, and "now" is passed in: no test sleeps.
Instances are real files ingested the way a C-STORE is; the agent-level tests receive
them from DCMTK's storescu.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dicomgen
import pytest

from agent import config as config_module
from agent.app import Agent
from agent.archive import Archive, commitments, mpps
from agent.archive.index import connect
from agent.archive.stale import StaleFiles
from agent.forward import retention
from agent.forward.forwarder import Forwarder
from agent.forward.settings import ForwardSettings
from agent.ops.status import status_report
from agent.status import STUCK_AFTER, Snapshot, State, StatusModel
from agent.status_file import publish, read_published
from agent.status_parts import ClockState
from tests import scu
from tests.support import FixedRouting, free_port, wait_until
from tests.test_forward import forward_config
from tests.test_forward_backoff import (
    RETRY_FIRST,
    ManualClock,
    Recorder,
    RejectingSCP,
    backoff_config,
    filled,
)

DAY = 86400.0
YEAR = 365 * DAY
UNTRUSTED = ClockState(synchronised=False, plausible=False, trusted=False,
                       why="it reads 1970-01-01, before this release")
SETTINGS = ForwardSettings(to=("PACS",), destinations=frozenset({"PACS"}), keep_days=7.0)
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


class Box:
    """An archive whose clock trust is the status model's, as the agent wires it."""

    def __init__(self, root: Path, floor: Callable[[], int] = lambda: 0) -> None:
        self.status = StatusModel()
        self.archive = Archive(root, floor=floor, routing=FixedRouting("PACS"),
                               clock_trusted=lambda: self.status.snapshot().clock.trusted)
        self.uids: list[str] = []

    def trust(self, trusted: bool) -> None:
        self.status.clock_state(ClockState() if trusted else UNTRUSTED)

    def receive(self, count: int) -> list[str]:
        """Ingest ``count`` new instances (each queued for PACS); their UIDs in arrival order."""
        uids = []
        for ds in dicomgen.series(count, size=8):
            path = self.archive.layout.tmp_dir / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            self.archive.ingest(path, sop_class_uid=ds.SOPClassUID,
                                sop_instance_uid=ds.SOPInstanceUID, calling_ae="CT")
            uids.append(str(ds.SOPInstanceUID))
        self.uids += uids
        return uids

    def deliver(self, uids: list[str], at: float) -> None:
        """PACS confirmed these instances at ``at`` (by the clock of that moment)."""
        for job in self.archive.outbox.due("PACS", float("inf"), 10_000):
            if job.sop_instance_uid in uids:
                self.archive.outbox.mark_done(job, at)

    def fail(self, uids: list[str], retry_at: Callable[[int], float]) -> None:
        """An attempt at each failed; the n-th retries at ``retry_at(n)``."""
        jobs = {j.sop_instance_uid: j for j in self.archive.outbox.due("PACS", float("inf"),
                                                                      10_000)}
        for n, uid in enumerate(uids):
            self.archive.outbox.mark_failed(jobs[uid], "0xA700", retry_at(n), quarantine=False)

    def archived(self) -> set[str]:
        """SOP Instance UIDs whose files are in the archive."""
        return {p.stem for p in (self.archive.layout.root / "archive").rglob("*.dcm")}

    def column(self, sql: str) -> dict[str, float]:
        """SOP Instance UID -> the value ``sql`` selects (its first column is the UID)."""
        with self.archive.index.reading() as conn:
            return {str(uid): float(value) for uid, value in conn.execute(sql)}


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Box]:
    made = Box(tmp_path / "data")
    try:
        yield made
    finally:
        made.archive.close()


def test_a_year_forward_deletes_nothing_by_age_and_ages_move_with_the_jump(box: Box) -> None:
    t0 = time.time()
    uids = box.receive(4)
    box.deliver(uids, t0)
    box.trust(False)  # the clock leapt a year ahead: the judge no longer trusts it
    assert retention.sweep(box.archive, SETTINGS, now=t0 + YEAR) == 0
    assert box.archived() == set(uids)  # a year "old", yet delivered a moment ago
    box.archive.rebase_clock(YEAR)  # the jump, as the judge reports it
    box.trust(True)  # and the clock is trusted there (say NTP confirms it)
    assert retention.sweep(box.archive, SETTINGS, now=t0 + YEAR + DAY) == 0
    assert box.archived() == set(uids)  # a day old in the new clock's terms
    # nothing kept forever: keep_days after the delivery they go
    assert retention.sweep(box.archive, SETTINGS, now=t0 + YEAR + 8 * DAY) == 4
    assert box.archived() == set()


def test_retries_after_a_jump_forward_stay_spread_in_their_order(box: Box) -> None:
    t0 = time.time()
    uids = box.receive(5)
    box.fail(uids, lambda n: t0 + 60.0 * (n + 1))  # due in 1, 2, ... 5 minutes
    before = box.column("SELECT SOPInstanceUID, next_attempt FROM forward_jobs")
    moved = box.archive.rebase_clock(YEAR)
    assert moved.forward_jobs == 5
    after = box.column("SELECT SOPInstanceUID, next_attempt FROM forward_jobs")
    assert after == {uid: due + YEAR for uid, due in before.items()}
    now = t0 + YEAR
    assert box.archive.outbox.due("PACS", now, 100) == []  # not all fired at once
    first = box.archive.outbox.due("PACS", now + 60.0, 100)
    assert [job.sop_instance_uid for job in first] == uids[:1]  # the order kept
    assert box.archive.outbox.next_due("PACS") == pytest.approx(now + 60.0)


def test_after_a_jump_back_nothing_waits_a_year(box: Box) -> None:
    uids = box.receive(3)
    t0 = time.time()  # after they were queued: the one never tried is due by then
    box.fail(uids[:2], lambda n: t0 + 30.0 * (n + 1))  # retrying, due in 30 s and 60 s
    box.archive.rebase_clock(-YEAR)
    now = t0 - YEAR
    assert [job.sop_instance_uid for job in box.archive.outbox.due("PACS", now, 100)] \
        == uids[2:]  # the one never tried is due now, as before the jump
    waits = box.archive.outbox.next_due("PACS")
    assert waits is not None and waits <= now
    due_soon = box.archive.outbox.due("PACS", now + 60.0, 100)
    assert {job.sop_instance_uid for job in due_soon} == set(uids)  # within a minute, all


def test_commitment_and_mpps_schedules_move_with_the_jump(box: Box) -> None:
    """Every other schedule kept in wall time moves too: commitment asked of a destination
    (its report deadline and its batch timer), commitment a modality asked of us (its
    next report and its give-up time), MPPS messages passed on."""
    t0 = time.time()
    asked, waiting = box.receive(2)
    commits = box.archive.pacs_commits
    commits.delivered(waiting, CT_IMAGE, "PACS", t0)
    commits.delivered(asked, CT_IMAGE, "PACS", t0)
    commits.requested([asked], "PACS", "1.2.3.4", t0 + 1.0)
    commitments.record(box.archive.index, "1.2.3.5", "CT", [(CT_IMAGE, asked)], t0)
    mpps.create(box.archive.index, mpps.Step("1.2.3.6", "IN PROGRESS", "CT", (), frozenset(),
                                             t0, t0, None, "{}"), mpps.Forward(("RIS",), "{}"))
    moved = box.archive.rebase_clock(-YEAR)
    assert (moved.pacs_commits, moved.commitments, moved.mpps_jobs) == (2, 1, 1)
    now = t0 - YEAR
    # asked a second ago: not overdue for a report (1 h timeout) in the new clock's terms
    assert commits.ask_again("PACS", now + 1.0 - 3600.0) == 0
    assert commits.ask_again("PACS", now + 2.0) == 1  # still asked again once it is due
    assert commits.pending("PACS").last_delivered_at == pytest.approx(now)
    [tx] = commitments.due(box.archive.index, now)
    assert tx.received_at == pytest.approx(now)  # give_up_hours counts from here
    assert mpps.next_due(box.archive.index, "RIS") == pytest.approx(now)


def test_once_trusted_again_old_copies_go_by_age_and_none_is_kept_forever(box: Box) -> None:
    t0 = time.time()
    seen, unseen = box.receive(2), box.receive(2)
    box.deliver(seen, t0 - 10 * DAY)  # delivered ten days ago: past keep_days
    box.deliver(unseen, t0)
    box.archive.rebase_clock(-YEAR)  # the clock went back a year, and the agent saw it
    box.trust(True)
    now = t0 - YEAR
    assert retention.sweep(box.archive, SETTINGS, now=now) == 2  # what is old still goes
    assert box.archived() == set(unseen)
    # a jump back nobody re-based (the agent was stopped): delivered "in a year" counts as
    # delivered now, so keep_days later it goes instead of a year and keep_days later
    box.archive.rebase_clock(YEAR)  # undo, as if the agent had never seen the jump
    assert retention.sweep(box.archive, SETTINGS, now=now) == 0
    assert box.archived() == set(unseen)
    assert retention.sweep(box.archive, SETTINGS, now=now + 8 * DAY) == 2
    assert box.archived() == set()


def test_boot_at_1970_flags_arrivals_and_the_floor_frees_the_earliest_arrived_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before the reboot the clock was right; after it, it reads 1970: what arrives is
    flagged and delivered "in 1970". Under the floor, delivered copies go in arrival order
    (by timestamp the newest arrivals would look 56 years older and go first), and one
    the PACS does not have yet never goes."""
    box = Box(tmp_path / "data")
    try:
        t0 = time.time()
        before = box.receive(3)
        box.deliver(before[1:], t0)  # the first is still retrying: undelivered
        box.trust(False)  # rebooted, 1970
        after = box.receive(3)
        box.deliver(after, 3600.0)  # 1970-01-01T01:00
        flags = box.column("SELECT SOPInstanceUID, clock_untrusted FROM instances")
        assert flags == {**dict.fromkeys(before, 0.0), **dict.fromkeys(after, 1.0)}
        assert box.archive.untrusted_arrivals() == 3
        monkeypatch.setattr(retention, "BATCH", 1)
        keep = 2  # the disk fills: the floor is met again once only this many are left
        box.archive.floor = lambda: 1 << 60 if box.archive.counts().instances > keep else 0
        # by age nothing goes (the clock is not trusted), but the floor frees space
        assert retention.sweep(box.archive, SETTINGS, now=3600.0 + YEAR) == 4
        assert box.archived() == {before[0], after[-1]}  # undelivered kept; the newest kept
    finally:
        box.archive.close()


def test_the_floor_frees_space_however_far_back_the_clock_went(box: Box) -> None:
    """Delivered "in the future" of a clock that went back: still freed under the floor."""
    t0 = time.time()
    uids = box.receive(2)
    box.deliver(uids, t0)
    box.trust(False)
    box.archive.floor = lambda: 1 << 60
    assert retention.sweep(box.archive, SETTINGS, now=t0 - YEAR) == 2
    assert box.archived() == set()


def test_a_jump_back_does_not_put_the_next_probe_of_a_dead_destination_a_year_away(
        tmp_path: Path) -> None:
    """The back-off runs on the monotonic clock: after the wall clock goes back a year, the
    probe still comes when its back-off step is over (a real PACS rejecting us)."""
    port = free_port()
    rejecting = RejectingSCP(port)
    config = backoff_config(tmp_path, port)
    archive, _uids = filled(tmp_path / "data", 3)
    clock, events = ManualClock(time.time() + 1), Recorder()
    forwarder = Forwarder(config, archive, events, clock)
    try:
        forwarder.start()
        wait_until(lambda: events.probes(), 30, "the destination to be reported down")
        assert rejecting.count() == 1
        probe_at = events.probes()[-1]
        clock.jump(-YEAR)
        archive.rebase_clock(-YEAR)  # as the agent does when its judge sees the jump
        forwarder.wake(["PACS"])
        clock.advance_to(probe_at - YEAR)  # the back-off step is over (on any clock)
        wait_until(lambda: rejecting.count() == 2, 30, "the next probe, not a year later")
        wait_until(lambda: len(events.probes()) >= 2, 30, "the probe reported")
        step = events.probes()[-1] - (probe_at - YEAR)  # shown in the new clock's terms
        assert 0.8 * 2 * RETRY_FIRST <= step <= 1.2 * 2 * RETRY_FIRST
    finally:
        forwarder.close()
        rejecting.close()
        archive.close()


def test_the_agent_flags_what_arrives_while_untrusted_and_rebases_on_a_jump(
        tmp_path: Path, running: list[Agent]) -> None:
    """Through the agent: storescu sends while the clock is not trusted; the PACS is
    down, so the jobs wait; the jump handed to the agent moves their schedule by as
    much, and retention deletes nothing by age meanwhile."""
    config = config_module.load_file(
        forward_config(tmp_path, {"PACS": ("ORTHANC", free_port())}, ["PACS"]))
    files = dicomgen.write_series(tmp_path / "study", 3, size=8)
    agent = Agent(config)
    running.append(agent)
    agent.judges_clock = False  # the test sets the clock's trust, not this machine's clock
    agent.status.clock_state(UNTRUSTED)
    agent.start()
    assert agent.archive is not None and agent.forwarder is not None
    assert scu.store(config.agent.port, files) == [0] * 3
    assert agent.archive.untrusted_arrivals() == 3
    due = _next_attempts(tmp_path / "data")
    agent._clock_jumped(YEAR)
    assert _next_attempts(tmp_path / "data") == {uid: at + YEAR for uid, at in due.items()}
    agent.status.clock_state(ClockState())  # trusted again: what arrives is not flagged
    assert scu.store(config.agent.port, dicomgen.write_series(tmp_path / "later", 1)) == [0]
    assert agent.archive.counts().instances == 4 and agent.archive.untrusted_arrivals() == 3
    shown = "\n".join(status_report(agent.layout, agent.status.snapshot()).lines())
    assert "3 arrived while the clock was not trusted" in shown
    with agent.archive.index.transaction() as conn:  # as if delivered long ago
        conn.executemany("UPDATE forward_jobs SET state = 'done', done_at = 0"
                         " WHERE SOPInstanceUID = ?", [(uid,) for uid in due])
    agent.status.clock_state(UNTRUSTED)
    assert agent.forwarder.sweep() == 0  # untrusted: nothing goes by age
    agent.status.clock_state(ClockState())
    assert agent.forwarder.sweep() == 3  # trusted: what is old goes, the undelivered stays
    assert agent.archive.counts().instances == 1


def _next_attempts(data_dir: Path) -> dict[str, float]:
    conn = connect(data_dir / "index.sqlite", readonly=True)
    try:
        return {uid: at for uid, at in conn.execute(
            "SELECT SOPInstanceUID, next_attempt FROM forward_jobs")}
    finally:
        conn.close()


def test_a_hung_agents_status_file_ages_on_the_monotonic_clock(tmp_path: Path) -> None:
    """Set back a year, the wall clock would call a file written a minute ago fresh for
    a year; `edge-agent status` ages it on the monotonic clock of the same boot."""
    t0, up = time.time(), 1000.0
    publish(Snapshot(state=State.SERVING), tmp_path, now=t0, uptime=up)
    fresh = read_published(tmp_path, now=t0 - YEAR, uptime=up + 1.0)
    assert fresh is not None and fresh["state"] == "serving"
    stale = read_published(tmp_path, now=t0 - YEAR, uptime=up + STUCK_AFTER + 5)
    assert stale is not None and stale["state"] == "failed"
    assert stale["silent_for"] == pytest.approx(STUCK_AFTER + 5)
    # and a year ahead it is not called hung when it is not
    ahead = read_published(tmp_path, now=t0 + YEAR, uptime=up + 1.0)
    assert ahead is not None and ahead["state"] == "serving"


class Ticks:
    """A monotonic clock that moves only when the test says."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_temp_file_is_stale_after_a_quiet_period_on_the_monotonic_clock(
        tmp_path: Path) -> None:
    """Its modification time is a year off (the clock jumped): it is not removed for
    that, only once nobody has written to it for the whole period."""
    ticks = Ticks()
    stale = StaleFiles(tmp_path, ticks)
    receiving, left = tmp_path / "receiving.dcm", tmp_path / "left.dcm"
    for path in (receiving, left):
        path.write_bytes(b"DICM")
        os.utime(path, (time.time() - YEAR, time.time() - YEAR))
    assert stale.sweep(300.0) == 0
    ticks.now = 200.0
    with receiving.open("ab") as more:  # the receive goes on
        more.write(b"more")
    assert stale.sweep(300.0) == 0
    ticks.now = 300.0
    assert stale.sweep(300.0) == 1 and not left.exists() and receiving.exists()
    ticks.now = 500.0
    assert stale.sweep(300.0) == 1 and not receiving.exists()


def test_the_agent_keeps_a_temp_file_whose_time_a_jump_made_old(
        agent: Agent) -> None:
    """A receive in progress when the clock leapt a year ahead keeps its temp file."""
    receiving = agent.layout.tmp_dir / "receiving.dcm"
    receiving.write_bytes(b"DICM")
    os.utime(receiving, (time.time() - YEAR, time.time() - YEAR))
    agent._sweep()
    assert receiving.exists()
