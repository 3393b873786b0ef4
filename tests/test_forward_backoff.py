"""A destination that cannot be reached backs off as a whole: one probe association on
the back-off schedule, the jobs waiting untouched behind it, one log line when it goes
down and one when it comes back; an instance the PACS refuses still fails alone.

Real peers: a pynetdicom SCP that rejects every association (and counts them), a port
nobody listens on, Orthanc, and a pynetdicom SCP that refuses chosen instances. The
forwarder runs in-process on a clock the test moves, so minutes of back-off pass at once.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path
from typing import Any

import dicomgen
import pytest
from bench.peers import Orthanc
from pynetdicom import AE, AllStoragePresentationContexts, evt

from agent import config as config_module
from agent.app import Agent
from agent.archive import Archive
from agent.archive.index import connect
from agent.config import Config
from agent.field.console import build_table
from agent.forward.forwarder import Forwarder
from agent.ops.reachability import state_line
from agent.status import StatusModel
from agent.words import duration_words
from tests import scu
from tests.support import FixedRouting, free_port, peer, run_cli, wait_until, write_config
from tests.test_forward import FAST_RETRY, forward_config, jobs

RETRY_FIRST, RETRY_MAX = 30.0, 600.0
DOWN_LINE = "cannot be reached, forwarding to it waits"
BACK_LINE = "is reachable again after"


class ManualClock:
    """Wall time that moves only when the test says; a wait ends when it is woken or the
    clock reaches its time. Its monotonic time moves with it, except by a ``jump``."""

    def __init__(self, start: float) -> None:
        self._now = start
        self._jumped = 0.0  # how far the wall clock was stepped: not elapsed time
        self._lock = threading.Lock()
        self._waiting: set[threading.Event] = set()

    def now(self) -> float:
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        with self._lock:
            return self._now - self._jumped

    def jump(self, seconds: float) -> None:
        """Step the wall clock (as NTP, or a person, would), not the monotonic one."""
        with self._lock:
            self._now += seconds
            self._jumped += seconds
            waiting = list(self._waiting)
        for event in waiting:
            event.set()

    def wait_until(self, event: threading.Event, when: float) -> bool:
        with self._lock:
            if self._now >= when:
                return event.is_set()
            self._waiting.add(event)  # before the check above is stale: no lost advance
        try:
            return event.wait()  # set by a wake-up, a stop, or advance_to
        finally:
            with self._lock:
                self._waiting.discard(event)

    def advance_to(self, when: float) -> None:
        """Move the clock to ``when`` and wake every waiter to look again."""
        with self._lock:
            self._now = max(self._now, when)
            waiting = list(self._waiting)
        for event in waiting:
            event.set()


class Recorder:
    """The forwarder's events, as the status model would receive them."""

    def __init__(self) -> None:
        self.states: list[tuple[float | None, str | None, float | None]] = []
        self.delivered = 0
        self.failures: list[str] = []
        self._lock = threading.Lock()

    def forwarded(self, name: str, seconds: float | None = None) -> None:
        with self._lock:
            self.delivered += 1

    def forward_failed(self, name: str, error: str) -> None:
        with self._lock:
            self.failures.append(error)

    def destination_state(self, name: str, down_since: float | None, error: str | None,
                          next_probe: float | None) -> None:
        with self._lock:
            self.states.append((down_since, error, next_probe))

    def last(self) -> tuple[float | None, str | None, float | None]:
        with self._lock:
            return self.states[-1]

    def probes(self) -> list[float]:
        """Every next-probe time reported, in order."""
        with self._lock:
            return [probe for _since, _error, probe in self.states if probe is not None]


class RejectingSCP:
    """A pynetdicom SCP that rejects every association (our AE title is unknown to it)
    and counts the requests."""

    def __init__(self, port: int) -> None:
        self.requests = 0
        self._lock = threading.Lock()
        ae = AE(ae_title="ORTHANC")
        ae.supported_contexts = AllStoragePresentationContexts
        ae.require_calling_aet = ["SOMEONE-ELSE"]
        self.server = ae.start_server(("127.0.0.1", port), block=False,
                                      evt_handlers=[(evt.EVT_REQUESTED, self._requested)])

    def _requested(self, event: Any) -> None:
        with self._lock:
            self.requests += 1

    def count(self) -> int:
        with self._lock:
            return self.requests

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


class RefusingSCP:
    """A pynetdicom Storage SCP that answers chosen instances with a failure status."""

    def __init__(self, refuse: dict[str, int]) -> None:
        self.refuse = refuse
        self.received: list[str] = []
        self.requests = 0
        self._lock = threading.Lock()
        self.port = free_port()
        ae = AE(ae_title="SCRIPTED")
        ae.supported_contexts = AllStoragePresentationContexts
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=[
            (evt.EVT_C_STORE, self._store), (evt.EVT_REQUESTED, self._requested)])

    def _requested(self, event: Any) -> None:
        with self._lock:
            self.requests += 1

    def _store(self, event: Any) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        with self._lock:
            self.received.append(uid)
        return self.refuse.get(uid, 0x0000)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def backoff_config(root: Path, port: int, ae_title: str = "ORTHANC",
                   associations: int = 2) -> Config:
    """Forwarding to PACS at ``port`` on the real back-off schedule (30 s to 600 s)."""
    path = write_config(root / "agent.toml",
                        {"port": free_port(), "bind": "127.0.0.1",
                         "data_dir": str(root / "data"), "min_free_mb": 0},
                        {"PACS": peer(ae_title, port, allow=("echo",))})
    path.write_text(path.read_text() + (
        f'\n[forward]\nto = ["PACS"]\nretry_first = {RETRY_FIRST}\nretry_max = {RETRY_MAX}\n'
        f"associations = {associations}\n"))
    return config_module.load_file(path)


def filled(root: Path, count: int) -> tuple[Archive, list[str]]:
    """An archive holding ``count`` instances, each queued for PACS (as ingest queues)."""
    archive = Archive(root, routing=FixedRouting("PACS"))
    uids = []
    for ds in dicomgen.series(count, size=8):
        path = archive.layout.tmp_dir / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        archive.ingest(path, sop_class_uid=ds.SOPClassUID,
                       sop_instance_uid=ds.SOPInstanceUID, calling_ae="CT")
        uids.append(str(ds.SOPInstanceUID))
    return archive, uids


def job_rows(data_dir: Path) -> dict[str, tuple[str, int, float, str | None]]:
    """Every job: SOP Instance UID -> (state, attempts, next_attempt, last_error)."""
    conn = connect(data_dir / "index.sqlite", readonly=True)
    try:
        rows = conn.execute("SELECT SOPInstanceUID, state, attempts, next_attempt, last_error"
                            " FROM forward_jobs")
        return {uid: (state, tries, due, error) for uid, state, tries, due, error in rows}
    finally:
        conn.close()


def lines_with(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage()]


STEPS = 6


def test_a_dead_destination_is_probed_once_per_back_off_step_then_delivered(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="agent.forward")
    pacs = Orthanc(tmp_path / "orthanc")  # its port, taken for now by a PACS that rejects us
    rejecting = RejectingSCP(pacs.port)
    config = backoff_config(tmp_path, pacs.port)
    archive, uids = filled(tmp_path / "data", 100)
    before = job_rows(tmp_path / "data")
    clock, events = ManualClock(time.time() + 1), Recorder()
    forwarder = Forwarder(config, archive, events, clock)
    try:
        forwarder.start()
        wait_until(lambda: events.probes(), 30, "the destination to be reported down")
        first = rejecting.count()
        assert first == 1  # two lanes, and nothing known yet: one dials, the other waits
        since, error, _probe = events.last()
        assert since == clock.now() and "calling AE title not recognised" in str(error)
        for step in range(1, STEPS + 1):
            probe_at = events.probes()[-1]
            clock.advance_to(probe_at)
            wait_until(lambda at=probe_at: events.probes()[-1] > at, 30, f"probe {step} failed")
            assert rejecting.count() == first + step  # one association per step, not per job
            delay = events.probes()[-1] - probe_at
            expected = min(RETRY_MAX, RETRY_FIRST * 2 ** step)
            assert 0.8 * expected <= delay <= 1.2 * expected
        assert job_rows(tmp_path / "data") == before  # no attempt counted, nothing pushed
        assert events.failures == [] and len(lines_with(caplog, DOWN_LINE)) == 1
        assert "100 instances queued" in lines_with(caplog, DOWN_LINE)[0].getMessage()
        rejecting.close()
        with pacs:  # the PACS comes up on the same port
            assert since is not None
            down_for = events.probes()[-1] - since
            clock.advance_to(events.probes()[-1])
            wait_until(lambda: pacs.count() == 100, 60, "every waiting instance at the PACS")
            wait_until(lambda: {row[0] for row in job_rows(tmp_path / "data").values()}
                       == {"done"}, 30, "every job done")
    finally:
        forwarder.close()
        rejecting.close()
        archive.close()
    assert events.last() == (None, None, None)
    [back] = lines_with(caplog, BACK_LINE)
    assert "100 instances waited" in back.getMessage()
    assert f"after {duration_words(down_for)} down" in back.getMessage()
    assert len(lines_with(caplog, DOWN_LINE)) == 1
    assert set(uids) == set(job_rows(tmp_path / "data"))


def test_lanes_share_one_probe(tmp_path: Path) -> None:
    """Eight lanes, one destination: still one association per back-off step."""
    port = free_port()
    rejecting = RejectingSCP(port)
    config = backoff_config(tmp_path, port, associations=8)
    archive, _uids = filled(tmp_path / "data", 40)
    clock, events = ManualClock(time.time() + 1), Recorder()
    forwarder = Forwarder(config, archive, events, clock)
    try:
        forwarder.start()
        wait_until(lambda: events.probes(), 30, "the destination to be reported down")
        first = rejecting.count()
        assert first == 1
        for step in range(1, 4):
            probe_at = events.probes()[-1]
            clock.advance_to(probe_at + 1)
            wait_until(lambda at=probe_at: events.probes()[-1] > at, 30, f"probe {step} failed")
            assert rejecting.count() == first + step
        forwarder.close()
        assert rejecting.count() == first + 3
    finally:
        forwarder.close()
        rejecting.close()
        archive.close()


def test_a_reload_that_fixes_the_peer_probes_at_once(tmp_path: Path) -> None:
    """The PACS's address was wrong: after the reload it is tried now, not in 10 min."""
    rejecting = RejectingSCP(free_port())
    right = RefusingSCP({})  # accepts everything
    config = backoff_config(tmp_path, rejecting.server.server_address[1])
    archive, _uids = filled(tmp_path / "data", 5)
    clock, events = ManualClock(time.time() + 1), Recorder()
    forwarder = Forwarder(config, archive, events, clock)
    try:
        forwarder.start()
        wait_until(lambda: events.probes(), 30, "the destination to be reported down")
        fixed = backoff_config(tmp_path, right.port, ae_title="SCRIPTED")
        forwarder.reconfigure(fixed)  # the clock stands still: only the reload can do it
        wait_until(lambda: len(right.received) == 5, 30, "delivery to the right address")
        wait_until(lambda: events.last() == (None, None, None), 10, "the destination up")
        assert rejecting.count() == 1
    finally:
        forwarder.close()
        rejecting.close()
        right.close()
        archive.close()


def test_an_instance_refused_by_a_reachable_pacs_fails_alone(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agent.forward")
    archive, uids = filled(tmp_path / "data", 10)
    refused = {uids[3]: 0xA900, uids[7]: 0xC000}
    scp = RefusingSCP(refused)
    clock, events = ManualClock(time.time() + 1), Recorder()
    config = backoff_config(tmp_path, scp.port, ae_title="SCRIPTED")
    forwarder = Forwarder(config, archive, events, clock)
    try:
        forwarder.start()
        tries = config.forward.permanent_tries
        for attempt in range(1, tries + 1):
            wait_until(lambda n=attempt: all(job_rows(tmp_path / "data")[uid][1] == n
                                             for uid in refused), 30, f"refused try {attempt}")
            rows = job_rows(tmp_path / "data")
            clock.advance_to(max(rows[uid][2] for uid in refused))
        wait_until(lambda: {job_rows(tmp_path / "data")[uid][0] for uid in uids
                            if uid not in refused} == {"done"}, 30, "the others delivered")
        rows = job_rows(tmp_path / "data")
        assert {uid: rows[uid][0] for uid in refused} == dict.fromkeys(refused, "quarantined")
        assert "0xA900" in str(rows[uids[3]][3]) and "0xC000" in str(rows[uids[7]][3])
        assert {rows[uid][0] for uid in uids if uid not in refused} == {"done"}
        assert events.delivered == 8 and len(events.failures) == 2 * tries
        assert all(state == (None, None, None) for state in events.states)  # never down
        assert not lines_with(caplog, DOWN_LINE)
        assert scp.received.count(uids[3]) == tries and scp.received.count(uids[0]) == 1
    finally:
        forwarder.close()
        scp.close()
        archive.close()


def test_the_pacs_down_shows_in_queue_and_status_then_everything_arrives(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Through the agent and its forwarding process, in real time: connection refused."""
    caplog.set_level(logging.INFO)
    pacs = Orthanc(tmp_path / "orthanc")  # not started: nothing listens on its port
    config_file = forward_config(tmp_path, {"PACS": ("ORTHANC", pacs.port)}, ["PACS"])
    config = config_module.load_file(config_file)
    assert config.forward.retry_first == FAST_RETRY["retry_first"]
    sent = dicomgen.write_series(tmp_path / "study", 100, size=8)
    with Agent(config) as agent:
        assert scu.store(config.agent.port, sent) == [0] * 100
        wait_until(lambda: agent.status.snapshot().destinations
                   and agent.status.snapshot().destinations[0].state == "down", 30,
                   "the PACS to show down")
        [state] = agent.status.snapshot().destinations
        assert "connection refused: nothing listens on" in str(state.down_error)
        assert state.down_since and state.next_probe and state.last_error is None
        wait_until(lambda: agent.status.snapshot().destinations[0].pending == 100, 30,
                   "the queue depth")
        assert set(jobs(tmp_path / "data").values()) == {"pending"}  # no failed tries
        listing = wait_until(lambda: _shows(config_file, "queue", "state DOWN"), 30,
                             "queue to show the PACS down")
        assert "PACS: 100 pending, 0 retrying, 0 quarantined" in listing
        assert re.search(r"state DOWN since \S+ \(for [^)]+\): .*connection refused", listing)
        assert listing.count("connection refused") == 1 and "waits (down)" in listing
        assert "tries 1" not in listing
        status = wait_until(lambda: _shows(config_file, "status", "state DOWN since"), 30,
                            "status to show the PACS down")
        assert "connection refused" in status and "PACS down" in agent.status.snapshot().summary()
        console = build_table(agent)  # the console renders the same results
        for command in ("queue", "status"):
            shown = "\n".join(console.run_line(command).lines())
            assert re.search(r"state DOWN since .*connection refused.*next probe|probing", shown)
        with pacs:
            wait_until(lambda: pacs.count() == 100, 60, "the PACS to receive everything")
            wait_until(lambda: agent.status.snapshot().destinations[0].state == "up", 30,
                       "the PACS to show up again")
            wait_until(lambda: _shows(config_file, "status", "state up"), 30, "status: up")
            wait_until(lambda: lines_with(caplog, BACK_LINE), 10, "the line that it is back")
    assert set(jobs(tmp_path / "data").values()) == {"done"}
    assert len(lines_with(caplog, DOWN_LINE)) == 1
    [back] = lines_with(caplog, BACK_LINE)
    assert "100 instances waited" in back.getMessage()
    # the outage is told once, in words: pynetdicom's own lines for each probe stay quiet
    assert [r.getMessage() for r in caplog.records
            if r.name.startswith("pynetdicom") and r.levelno >= logging.WARNING] == []


def _shows(config_file: Path, command: str, text: str) -> str | None:
    """The CLI command's output if it contains ``text`` (the agent publishes its status
    every few seconds), else None."""
    out = run_cli(command, "--config", str(config_file)).stdout
    return out if text in out else None


def test_the_state_line_says_since_when_why_and_the_next_probe() -> None:
    model = StatusModel()
    t0 = 1_800_000_000.0
    model.destination_state("PACS", t0, "PACS (P@h:104): connection refused", t0 + 200)
    [down] = model.snapshot().to_json()["destinations"]
    assert down["state"] == "down" and down["down_since"] == "2027-01-15T08:00:00+00:00"
    assert state_line(down, t0 + 72) == (
        "DOWN since 2027-01-15T08:00:00+00:00 (for 1 min 12 s): PACS (P@h:104): connection"
        " refused; next probe in 2 min 8 s; its jobs wait (not counted as failed tries)")
    assert "probing now" in state_line(down, t0 + 200)
    assert model.snapshot().summary().endswith("PACS down")
    model.destination_state("PACS", None, None, None)
    [up] = model.snapshot().to_json()["destinations"]
    assert state_line(up, t0) == "up" and up["down_since"] is None and up["down_error"] is None
    assert [duration_words(s) for s in (0.24, 2, 59, 60, 3599, 3600, 90061)] == [
        "0.2 s", "2 s", "59 s", "1 min", "59 min 59 s", "1 h", "1 d 1 h"]
