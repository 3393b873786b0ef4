"""A destination's pace against a real peer (DCMTK storescp): outside its send windows
nothing reaches it but the priority rule's instances, and the jobs wait untouched; the
window opening (the test's clock moved), a reload or an untrusted clock lets them go; a
bandwidth cap holds on a real transfer, and a stop ends a throttled send at once.

The forwarder runs in-process on a clock the test moves (the windows' wall time); the
bucket runs on the real monotonic clock.
"""

from __future__ import annotations

import datetime as dt
import logging
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dicomgen
import pydicom
import pytest

from agent import config as config_module
from agent.archive import Archive
from agent.config import Config
from agent.forward.forwarder import Forwarder
from agent.forward.process import ForwardingProcess
from agent.net import prepare_pynetdicom
from agent.ops.reachability import pace_line
from agent.status import StatusModel
from agent.status_parts import ClockState
from tests import scu
from tests.support import (
    AgentProcess,
    FixedRouting,
    archive_datasets,
    free_port,
    run_cli,
    storescp,
    wait_until,
)
from tests.test_forward_backoff import ManualClock, Recorder, job_rows

prepare_pynetdicom()  # the engine, whose write path the cap throttles


def pace_config(root: Path, port: int, associations: int = 2, **pace: Any) -> Config:
    """Forwarding to PACS (storescp at ``port``) with these pace keys."""
    return config_module.parse({
        "agent": {"data_dir": str(root / "data"), "port": free_port(), "bind": "127.0.0.1",
                  "min_free_mb": 0},
        "peers": {"PACS": {"ae_title": "DEST", "host": "127.0.0.1", "port": port, **pace}},
        "forward": {"to": ["PACS"], "retry_first": 0.2, "retry_max": 0.5,
                    "associations": associations},
    })


def fill(archive: Archive, modality: str, count: int, size: int = 16) -> list[str]:
    """``count`` instances of one new series, each queued for PACS."""
    return archive_datasets(archive, dicomgen.series(count, modality=modality, size=size))


def received(directory: Path) -> set[str]:
    """SOP Instance UIDs storescp wrote (it names files by modality and UID)."""
    return {p.name.split(".", 1)[1] for p in directory.iterdir() if p.is_file()}


def noon_tomorrow() -> float:
    """A local noon after every job's creation time (jobs are due at once, by this clock)."""
    tomorrow = dt.date.today() + dt.timedelta(days=1)
    return dt.datetime.combine(tomorrow, dt.time(12, 0)).timestamp()


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    port, directory = free_port(), tmp_path / "received"
    process = storescp(directory, port, "--fork")  # lanes at once, an association each
    try:
        yield port, directory
    finally:
        process.terminate()
        process.wait(10)


def all_asleep(clock: ManualClock, lanes: int) -> bool:
    """Every lane waits on the clock: each looked at its queue and found nothing to send."""
    with clock._lock:
        return len(clock._waiting) >= lanes


def states(data_dir: Path, uids: list[str]) -> set[tuple[str, int]]:
    rows = job_rows(data_dir)
    return {(rows[uid][0], rows[uid][1]) for uid in uids}


def test_outside_the_windows_only_priority_goes_and_the_window_opening_sends_the_rest(
        tmp_path: Path, peer: tuple[int, Path]) -> None:
    port, directory = peer
    config = pace_config(tmp_path, port, send_windows=["22:00-06:00"],
                         priority={"Modality": "CT"})
    archive = Archive(tmp_path / "data", routing=FixedRouting("PACS"))
    urgent, routine = fill(archive, "CT", 3), fill(archive, "MR", 5)
    clock = ManualClock(noon_tomorrow())
    forwarder = Forwarder(config, archive, Recorder(), clock)
    try:
        forwarder.start()
        wait_until(lambda: received(directory) == set(urgent), 30, "the priority instances")
        wait_until(lambda: all_asleep(clock, 2), 30, "both lanes to wait for the window")
        assert received(directory) == set(urgent)
        assert states(tmp_path / "data", routine) == {("pending", 0)}  # untouched
        window = forwarder.pacer("PACS").window()
        assert window.reason == "outside its send windows (22:00-06:00); opens at 22:00"
        assert window.opens_at is not None
        clock.advance_to(window.opens_at)
        wait_until(lambda: received(directory) == set(urgent + routine), 30, "the rest")
        wait_until(lambda: states(tmp_path / "data", routine) == {("done", 1)}, 30, "done")
    finally:
        forwarder.close()
        archive.close()


def test_a_reload_re_evaluates_priority_and_windows(tmp_path: Path,
                                                     peer: tuple[int, Path]) -> None:
    port, directory = peer
    closed = {"send_windows": ["22:00-06:00"], "priority": {"Modality": "CT"}}
    config = pace_config(tmp_path, port, **closed)
    archive = Archive(tmp_path / "data", routing=FixedRouting("PACS"))
    ct, mr = fill(archive, "CT", 2), fill(archive, "MR", 2)
    sc = fill(archive, "SC", 2)
    clock = ManualClock(noon_tomorrow())
    forwarder = Forwarder(config, archive, Recorder(), clock)
    try:
        forwarder.start()
        wait_until(lambda: received(directory) == set(ct), 30, "CT, the priority")
        forwarder.reconfigure(pace_config(tmp_path, port, send_windows=["22:00-06:00"],
                                          priority={"Modality": "MR"}))
        wait_until(lambda: received(directory) == set(ct + mr), 30, "MR, now the priority")
        wait_until(lambda: all_asleep(clock, 2), 30, "both lanes to wait for the window")
        assert received(directory) == set(ct + mr)
        forwarder.reconfigure(pace_config(tmp_path, port))  # no windows any more
        wait_until(lambda: received(directory) == set(ct + mr + sc), 30, "everything")
    finally:
        forwarder.close()
        archive.close()


def test_an_untrusted_clock_ignores_the_windows(tmp_path: Path,
                                                peer: tuple[int, Path]) -> None:
    port, directory = peer
    config = pace_config(tmp_path, port, send_windows=["22:00-06:00"])
    archive = Archive(tmp_path / "data", routing=FixedRouting("PACS"))
    uids = fill(archive, "CT", 4)
    clock = ManualClock(noon_tomorrow())
    forwarder = Forwarder(config, archive, Recorder(), clock)
    try:
        forwarder.start()
        wait_until(lambda: all_asleep(clock, 2), 30, "both lanes to wait for the window")
        assert received(directory) == set()
        forwarder.trust_clock(False)  # as the agent's process says over the pipe
        assert forwarder.pacer("PACS").window().reason == (
            "send windows (22:00-06:00) ignored: the clock is not trusted")
        wait_until(lambda: received(directory) == set(uids), 30, "everything, windows ignored")
    finally:
        forwarder.close()
        archive.close()


CAP = 500_000  # bytes per second


@pytest.mark.slow
def test_a_capped_transfer_stays_under_the_cap(tmp_path: Path, peer: tuple[int, Path]) -> None:
    """About 4 MB at 500 kB/s over two lanes sharing the bucket: the rate measured from
    the start to the last arrival does not exceed the cap by 10 % (an upper bound only: a
    slow machine lowers it). The bucket's half-second burst is at most 6 % of 8 s."""
    port, directory = peer
    config = pace_config(tmp_path, port, max_bytes_per_second=CAP)
    archive = Archive(tmp_path / "data", routing=FixedRouting("PACS"))
    uids = fill(archive, "CT", 32, size=256)
    size = sum(p.stat().st_size for p in (tmp_path / "data").rglob("*.dcm"))
    assert size > 8 * CAP
    forwarder = Forwarder(config, archive, Recorder(), ManualClock(time.time() + 1))
    try:
        started = time.monotonic()
        forwarder.start()
        wait_until(lambda: received(directory) == set(uids), 60, "every instance")
        rate = size / (time.monotonic() - started)
        bucket = forwarder.pacer("PACS").bucket
        assert bucket.taken >= size - 32 * 400  # every byte on the wire went through it
        assert bucket.waited > 0  # the writers were held back
        assert rate <= 1.1 * CAP, f"{rate:.0f} B/s against a cap of {CAP}"
    finally:
        forwarder.close()
        archive.close()


def test_a_stop_ends_a_throttled_send_and_the_job_waits_untouched(
        tmp_path: Path, peer: tuple[int, Path]) -> None:
    port, _directory = peer
    config = pace_config(tmp_path, port, associations=1, max_bytes_per_second=20_000)
    archive = Archive(tmp_path / "data", routing=FixedRouting("PACS"))
    big = dicomgen.large_instance(archive.layout.tmp_dir / "big.dcm", 2_000_000)
    uid = str(pydicom.dcmread(big, stop_before_pixels=True).SOPInstanceUID)
    archive.ingest(big, sop_class_uid=dicomgen.MULTIFRAME_SC, sop_instance_uid=uid,
                   calling_ae="CT")
    forwarder = Forwarder(config, archive, Recorder(), ManualClock(time.time() + 1))
    try:
        forwarder.start()
        bucket = forwarder.pacer("PACS").bucket
        wait_until(lambda: bucket.takers > 0, 30, "the send to begin, throttled")
        forwarder.close()
        sender = forwarder.senders["PACS"][0]
        assert sender._thread is not None and not sender._thread.is_alive()
        assert job_rows(tmp_path / "data")[uid][:2] == ("pending", 0)
    finally:
        forwarder.close()
        archive.close()


def hhmm(moment: dt.datetime) -> str:
    return f"{moment:%H:%M}"


def agent_config(root: Path, agent_port: int, pacs_port: int, window: str) -> Path:
    """A running agent's configuration: PACS (storescp) with one send window, the CT
    priority rule and a cap; the clock trusted without a time source."""
    path = root / "agent.toml"
    path.write_text(f"""
[agent]
port = {agent_port}
bind = "127.0.0.1"
data_dir = "{root / 'data'}"
min_free_mb = 0

[clock]
require_sync = false

[peers.CT]
ae_title = "MODALITY"
host = "127.0.0.1"
port = 104
allow = ["store"]

[peers.PACS]
ae_title = "DEST"
host = "127.0.0.1"
port = {pacs_port}
max_bytes_per_second = 50_000_000
send_windows = ["{window}"]
priority = {{ Modality = "CT" }}

[forward]
to = ["PACS"]
""")
    return path


@pytest.mark.slow
def test_queue_and_status_say_why_a_destination_waits_and_a_reload_into_a_window_sends(
        tmp_path: Path, peer: tuple[int, Path]) -> None:
    port, directory = peer
    now = dt.datetime.now()
    later = f"{hhmm(now + dt.timedelta(hours=2))}-{hhmm(now + dt.timedelta(hours=3))}"
    agent_port = free_port()
    config_file = agent_config(tmp_path, agent_port, port, later)
    urgent = dicomgen.write_series(tmp_path / "ct", 2, modality="CT")
    routine = dicomgen.write_series(tmp_path / "mr", 3, modality="MR")
    uids = {p: str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
            for p in urgent + routine}
    agent = AgentProcess(config_file, tmp_path / "data").start()
    try:
        assert scu.store(agent_port, urgent + routine) == [0] * 5
        wait_until(lambda: received(directory) == {uids[p] for p in urgent}, 30, "CT only")
        opens = hhmm(now + dt.timedelta(hours=2))
        why = f"outside its send windows ({later}); opens at {opens}"

        def queue_says() -> str | None:
            out = run_cli("queue", "--config", str(config_file)).stdout
            return out if why in out else None

        listing = wait_until(queue_says, 30, "queue to say why PACS waits")
        assert "3 pending" in listing and listing.count("waits (window)") == 3
        assert "capped at 50 MB/s (not reached now)" in listing
        status = run_cli("status", "--config", str(config_file)).stdout
        assert f"pace  {why}; priority instances (Modality = CT) go now; its jobs wait" in status
        assert received(directory) == {uids[p] for p in urgent}
        around = f"{hhmm(now - dt.timedelta(hours=1))}-{hhmm(now + dt.timedelta(hours=1))}"
        agent_config(tmp_path, agent_port, port, around)
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGHUP)  # the clock is in a window now
        wait_until(lambda: received(directory) == set(uids.values()), 30, "everything")
        wait_until(lambda: f"pace  inside its send window {around}" in run_cli(
            "status", "--config", str(config_file)).stdout, 30, "status to say it sends")
    finally:
        agent.stop()


def test_the_agent_tells_the_forwarding_process_when_the_clock_is_not_trusted(
        tmp_path: Path, peer: tuple[int, Path], caplog: pytest.LogCaptureFixture) -> None:
    """The clock judge's word crosses the pipe (``ClockTrust``): a real forwarding process
    ignores the windows once the status model says the clock is untrusted, and the status
    says so."""
    caplog.set_level(logging.INFO)
    port, directory = peer
    now = dt.datetime.now()
    later = f"{hhmm(now + dt.timedelta(hours=2))}-{hhmm(now + dt.timedelta(hours=3))}"
    config = pace_config(tmp_path, port, send_windows=[later])
    status = StatusModel()
    with Archive(tmp_path / "data", routing=FixedRouting("PACS")) as archive:
        uids = fill(archive, "CT", 3)
        supervisor = ForwardingProcess(lambda: config, status)
        supervisor.start(archive)
        try:
            supervisor.refresh_status()  # trusted: the window holds the jobs back
            pacs = {d.name: d for d in status.snapshot().destinations}["PACS"]
            assert not pacs.window_open and pacs.window is not None
            assert pacs.window.startswith(f"outside its send windows ({later})")
            status.clock_state(ClockState(synchronised=False, trusted=False))
            supervisor.refresh_status()
            wait_until(lambda: received(directory) == set(uids), 30, "windows ignored")
            assert any("send windows are ignored" in r.getMessage() for r in caplog.records)
            pacs = {d.name: d for d in status.snapshot().destinations}["PACS"]
            assert pacs.window_open and pacs.window == (
                f"send windows ({later}) ignored: the clock is not trusted")
        finally:
            supervisor.close()


@pytest.mark.slow
def test_status_says_while_the_cap_holds_a_destination_back(
        tmp_path: Path, peer: tuple[int, Path]) -> None:
    """A real forwarding process says when the cap holds writes back (``Throttled``),
    and when it no longer does; the status's pace line says it."""
    port, directory = peer
    config = pace_config(tmp_path, port, max_bytes_per_second=100_000)
    status = StatusModel()
    with Archive(tmp_path / "data", routing=FixedRouting("PACS")) as archive:
        uids = fill(archive, "CT", 10, size=128)  # some 330 kB: seconds at 100 kB/s
        supervisor = ForwardingProcess(lambda: config, status)
        supervisor.start(archive)

        def pacs() -> dict[str, Any]:
            supervisor.refresh_status()  # as the housekeeping tick does
            found = {d["name"]: d for d in status.snapshot().to_json()["destinations"]}
            return found.get("PACS", {})

        try:
            wait_until(lambda: pacs().get("throttled"), 30, "PACS reported throttled")
            assert pace_line(pacs()) == "throttled: sending at its cap of 100 kB/s"
            wait_until(lambda: received(directory) == set(uids), 60, "everything")
            wait_until(lambda: pacs().get("throttled") is False, 30, "no longer throttled")
            assert pace_line(pacs()) == "capped at 100 kB/s (not reached now)"
        finally:
            supervisor.close()
