"""The clock judge (``agent.timekeeping``): synchronised, plausible, trusted, and jumps,
with injected clocks and sync sources (no sleeping); then a real agent whose clock
readings and timesyncd flag file the test sets, seen in its status, LEDs, log and the
``clock`` and ``status`` commands."""

from __future__ import annotations

import datetime as dt
import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import dicomgen
import pytest

from agent import config as config_module
from agent import timekeeping
from agent.app import Agent
from agent.archive import Archive, Layout
from agent.config import ClockSettings
from agent.errors import ConfigErrors
from agent.field import patterns
from agent.ops.clock import clock_report
from agent.status import Snapshot, State
from agent.status_file import publish
from agent.status_parts import ClockState
from agent.timekeeping import Arrivals, ClockJudge, SyncSources
from tests.support import FixedRouting, dcmtk, run_cli, wait_until

YEAR = 365 * 86400.0
NOW = dt.datetime(2027, 3, 1, 12, tzinfo=dt.timezone.utc).timestamp()  # a plausible time
BOOT_1970 = 1000.0  # a Pi without an RTC or a saved time: the epoch, and a few seconds


class Flag:
    """systemd-timesyncd's flag file, in a temporary directory, and a kernel whose word the
    test sets (None: cannot be asked, as off Linux)."""

    def __init__(self, directory: Path, kernel: bool | None = None) -> None:
        self.path = directory / "synchronized"
        self.kernel = kernel

    def sources(self) -> SyncSources:
        return SyncSources(kernel=lambda: self.kernel, timesyncd_flag=self.path)

    def appear(self) -> None:
        self.path.touch()


def judge(flag: Flag, newest: float | None = None, **rules: object) -> ClockJudge:
    settings = ClockSettings(**rules)  # type: ignore[arg-type]
    return ClockJudge(lambda: newest, lambda: settings, flag.sources())


# --- synchronised ---------------------------------------------------------------------


def test_the_timesyncd_file_appearing_makes_the_clock_synchronised(tmp_path: Path) -> None:
    flag = Flag(tmp_path)
    clock = judge(flag)
    first = clock.tick(NOW, 100.0).state
    assert first.synchronised is None and first.plausible and not first.trusted
    assert first.doubt() == "clock not known to be synchronised"
    flag.appear()
    second = clock.tick(NOW + 1, 101.0).state
    assert second.synchronised is True and second.trusted and second.doubt() is None


def test_the_kernel_decides_when_there_is_no_timesyncd_file(tmp_path: Path) -> None:
    flag = Flag(tmp_path, kernel=False)
    clock = judge(flag)
    state = clock.tick(NOW, 1.0).state
    assert state.synchronised is False and not state.trusted
    assert state.doubt() == "clock not synchronised"
    flag.kernel = True
    assert clock.tick(NOW + 1, 2.0).state.trusted
    flag.kernel = False
    flag.appear()  # either source suffices
    assert clock.tick(NOW + 2, 3.0).state.synchronised is True


def test_without_a_time_source_to_wait_for_a_plausible_clock_is_trusted(tmp_path: Path) -> None:
    state = judge(Flag(tmp_path, kernel=False), require_sync=False).tick(NOW, 1.0).state
    assert state.synchronised is False and state.plausible and state.trusted


def test_adjtimex_answers_on_this_machine() -> None:
    found = timekeeping.adjtimex()
    if not sys.platform.startswith("linux"):
        assert found is None
        return
    assert found is not None
    state, status = found
    assert 0 <= state <= timekeeping.TIME_ERROR and status >= 0
    expected = state != timekeeping.TIME_ERROR and not status & timekeeping.STA_UNSYNC
    assert timekeeping.kernel_synchronised() is expected


# --- plausible ------------------------------------------------------------------------


def test_a_boot_at_1970_is_implausible_untrusted_and_shown(tmp_path: Path) -> None:
    state = judge(Flag(tmp_path, kernel=False)).tick(BOOT_1970, 5.0).state
    assert not state.plausible and not state.trusted
    assert state.why == "it reads 1970-01-01, before this software's release (2026-11-01)"
    snapshot = Snapshot(state=State.SERVING, clock=state)
    assert patterns.signals(snapshot, active=False)["fault"] is patterns.FAULT_CLOCK
    assert snapshot.summary().endswith(f"clock implausible: {state.why}")
    # even a synchronised clock cannot read before the release: it is wrong
    synced = judge(Flag(tmp_path, kernel=True)).tick(BOOT_1970, 5.0).state
    assert synced.synchronised and not synced.plausible and not synced.trusted


def test_the_clock_led_yields_to_real_faults_and_outranks_the_certificate() -> None:
    untrusted = ClockState(synchronised=False, trusted=False)
    soon = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=3)).isoformat()
    assert patterns.fault(Snapshot(clock=untrusted, certificate_expires=soon)) \
        is patterns.FAULT_CLOCK
    assert patterns.fault(Snapshot(clock=untrusted, below_floor=True)) is patterns.FAULT_DISK
    assert patterns.fault(Snapshot(clock=untrusted, state=State.FAILED)) is \
        patterns.FAULT_FAILED
    assert patterns.fault(Snapshot(clock=ClockState(synchronised=True))) is \
        patterns.FAULT_NONE


def test_a_jump_forward_of_a_year_is_reported_once_and_implausible_until_synchronised(
        tmp_path: Path) -> None:
    flag = Flag(tmp_path)
    clock = judge(flag, require_sync=False)  # even where trust needs no time source...
    assert clock.tick(NOW, 100.0).jump is None
    jumped = clock.tick(NOW + 1 + YEAR, 101.0)
    assert jumped.jump == pytest.approx(YEAR)
    state = jumped.state
    assert state.plausible and state.last_jump_seconds == pytest.approx(YEAR)
    # ...but where trust waits for one, the jump waits for its word
    flag = Flag(tmp_path / "b")
    (tmp_path / "b").mkdir()
    clock = judge(flag)
    clock.tick(NOW, 100.0)
    jumped = clock.tick(NOW + 1 + YEAR, 101.0)
    assert jumped.jump == pytest.approx(YEAR)
    assert not jumped.state.plausible and not jumped.state.trusted
    assert jumped.state.why is not None and "jumped +365.0 days" in jumped.state.why
    assert jumped.state.last_jump == timekeeping.iso(NOW + 1 + YEAR)
    later = clock.tick(NOW + 2 + YEAR, 102.0)
    assert later.jump is None and not later.state.plausible  # reported once, still doubted
    flag.appear()
    confirmed = clock.tick(NOW + 3 + YEAR, 103.0)
    assert confirmed.jump is None and confirmed.state.plausible and confirmed.state.trusted
    assert confirmed.state.last_jump_seconds == pytest.approx(YEAR)  # still shown


def test_a_step_by_a_synchronised_time_source_is_a_jump_and_believed(tmp_path: Path) -> None:
    flag = Flag(tmp_path, kernel=True)
    clock = judge(flag, max_jump_seconds=5.0)
    clock.tick(NOW, 10.0)
    assert clock.tick(NOW + 4 + 1, 11.0).jump is None  # 4 s: under the limit
    stepped = clock.tick(NOW + 30, 12.0)
    assert stepped.jump == pytest.approx(24.0) and stepped.state.trusted


def test_a_jump_back_below_the_newest_arrival_until_the_clock_passes_it(tmp_path: Path) -> None:
    flag = Flag(tmp_path, kernel=False)
    clock = judge(flag, newest=NOW, require_sync=False)
    assert clock.tick(NOW + 10, 50.0).state.trusted
    back = clock.tick(NOW - 3600, 51.0)
    assert back.jump == pytest.approx(-3611.0)
    assert not back.state.plausible and not back.state.trusted
    assert back.state.why == ("it reads earlier than the newest arrival "
                              f"({timekeeping.iso(NOW)})")
    assert clock.tick(NOW - 3599, 52.0).state == back.state  # the same words each tick
    assert not clock.tick(NOW - 100, 3551.0).state.plausible
    within = clock.tick(NOW - timekeeping.ARRIVAL_TOLERANCE + 1, 3650.0)
    assert within.jump is None and within.state.trusted  # nothing kept forever


def test_a_jump_back_waits_for_a_time_source_where_trust_needs_one(tmp_path: Path) -> None:
    flag = Flag(tmp_path, kernel=False)
    clock = judge(flag, newest=NOW)
    clock.tick(NOW + 10, 50.0)
    assert not clock.tick(NOW - 3600, 51.0).state.plausible
    assert not clock.tick(NOW + 3600, 7252.0).state.plausible  # past the arrival: no word
    flag.kernel = True  # NTP answers: its time outranks an arrival stamped by a wrong clock
    back = clock.tick(NOW - 3000, 7253.0)
    assert back.jump is not None and back.state.plausible and back.state.trusted


def test_only_arrivals_a_trusted_clock_stamped_hold_the_clock_back() -> None:
    arrivals = Arrivals()
    assert arrivals.newest() is None
    arrivals.note("2027-03-01T12:00:00+00:00", trusted=True)
    arrivals.note("2028-03-01T12:00:00+00:00", trusted=False)  # a year ahead, doubted
    arrivals.note("2027-02-01T12:00:00+00:00", trusted=True)  # older: changes nothing
    arrivals.note(None, trusted=True)
    assert arrivals.newest() == NOW


def test_the_newest_arrival_is_read_from_the_newest_rows_a_trusted_clock_stamped(
        tmp_path: Path) -> None:
    trusted = [True]
    with Archive(tmp_path / "data", routing=FixedRouting("PACS"),
                 clock_trusted=lambda: trusted[0]) as archive:
        assert archive.newest_arrival() is None
        for flag, ds in zip((True, False), list(dicomgen.series(2, size=8)), strict=True):
            trusted[0] = flag
            path = archive.layout.tmp_dir / "incoming.dcm"
            ds.save_as(path, enforce_file_format=True)
            archive.ingest(path, sop_class_uid=ds.SOPClassUID,
                           sop_instance_uid=ds.SOPInstanceUID, calling_ae="CT")
        with archive.index.transaction() as conn:  # stamped by clocks a day apart
            conn.execute("UPDATE instances SET received_at = '2027-03-01T12:00:00+00:00'"
                         " WHERE clock_untrusted = 0")
            conn.execute("UPDATE instances SET received_at = '2028-03-01T12:00:00+00:00'"
                         " WHERE clock_untrusted = 1")
        assert archive.newest_arrival() == "2027-03-01T12:00:00+00:00"


def test_the_clock_table_is_validated() -> None:
    config = config_module.parse({"clock": {"require_sync": False, "max_jump_seconds": 5}})
    assert config.clock == ClockSettings(require_sync=False, max_jump_seconds=5.0)
    assert config_module.parse({}).clock == ClockSettings()
    with pytest.raises(ConfigErrors, match=r"clock\.max_jump_seconds"):
        config_module.parse({"clock": {"max_jump_seconds": 0}})
    with pytest.raises(ConfigErrors, match=r"clock\.sync"):
        config_module.parse({"clock": {"sync": True}})


# --- the clock command and status, from the published file ------------------------------


def test_clock_and_status_commands_read_the_published_judgement(
        tmp_path: Path, config_file: Path, data_dir: Path) -> None:
    (data_dir / "run").mkdir(parents=True)
    jump = ClockState(synchronised=False, plausible=False, trusted=False,
                      why="it jumped +365.0 days at 2028-03-01T12:00:01+00:00, not yet "
                          "confirmed by a time source",
                      last_jump="2028-03-01T12:00:01+00:00", last_jump_seconds=YEAR)
    publish(Snapshot(state=State.SERVING, clock=jump, listening="127.0.0.1:1"), data_dir / "run")
    shown = run_cli("clock", "--config", str(config_file))
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == [
        "synchronised  no: no time source has set the clock (NTP, chrony)",
        f"plausible     no: {jump.why}",
        "trusted       no: age-based retention waits, arrivals are flagged",
        "last jump     +365.0 days at 2028-03-01T12:00:01+00:00",
    ]
    as_json = json.loads(run_cli("clock", "--json", "--config", str(config_file)).stdout)
    assert as_json["trusted"] is False and as_json["last_jump_seconds"] == YEAR
    status = run_cli("status", "--config", str(config_file)).stdout
    assert f"clock     NOT TRUSTED: implausible: {jump.why} (edge-agent clock)" in status
    publish(Snapshot(state=State.STOPPED, clock=jump), data_dir / "run")
    assert not clock_report(Layout(data_dir)).running
    stopped = run_cli("clock", "--config", str(config_file)).stdout
    assert stopped.startswith("agent         not running")


# --- a real agent -----------------------------------------------------------------------


class Readings:
    """The agent's (wall, monotonic) readings: the monotonic clock as it runs, the wall
    clock that plus an offset the test moves."""

    def __init__(self, wall_now: float) -> None:
        self.offset = wall_now - time.monotonic()

    def set_wall(self, wall_now: float) -> None:
        self.offset = wall_now - time.monotonic()

    def __call__(self) -> tuple[float, float]:
        monotonic = time.monotonic()
        return self.offset + monotonic, monotonic


def start(config_file: Path, flag: Flag, readings: Readings, running: list[Agent]) -> Agent:
    agent = Agent(config_module.load_file(config_file))
    agent.clock_sources = flag.sources()
    agent.clock_readings = readings
    running.append(agent)
    agent.start()
    return agent


def clock_of(agent: Agent, check: Callable[[ClockState], bool], what: str) -> ClockState:
    state: ClockState = wait_until(lambda: check(agent.status.snapshot().clock) and
                                   agent.status.snapshot().clock, 20, what)
    return state


def test_an_agent_booted_at_1970_distrusts_the_clock_until_ntp_answers(
        tmp_path: Path, config_file: Path, running: list[Agent],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="agent.app")
    flag = Flag(tmp_path, kernel=False)
    readings = Readings(BOOT_1970)
    agent = start(config_file, flag, readings, running)
    state = clock_of(agent, lambda c: not c.plausible, "the 1970 clock to be doubted")
    assert state.why is not None and state.why.startswith("it reads 1970-01-01,")
    assert not state.trusted
    snapshot = agent.status.snapshot()
    assert patterns.signals(snapshot, active=False)["fault"] is patterns.FAULT_CLOCK
    assert "clock implausible: it reads 1970-01-01," in snapshot.summary()
    shown = wait_until(lambda: (out := run_cli("clock", "--config", str(config_file)).stdout)
                       and "1970" in out and out, 20, "the clock command to show 1970")
    assert "plausible     no: it reads 1970-01-01," in shown
    # NTP answers: it steps the clock to now and says it is synchronised
    flag.appear()
    now = time.time()
    readings.set_wall(now)
    state = clock_of(agent, lambda c: c.trusted, "the clock to be trusted again")
    assert state.synchronised and state.plausible
    assert state.last_jump_seconds is not None and state.last_jump_seconds > now - 2 * BOOT_1970
    assert patterns.fault(agent.status.snapshot()) is patterns.FAULT_NONE
    assert "clock" not in agent.status.snapshot().summary()
    said = [r.getMessage() for r in caplog.records if r.name == "agent.app"]
    lost = [m for m in said if "not trusted" in m]
    assert len(lost) == 1 and lost[0].startswith(
        "the system clock is not trusted: clock implausible: it reads 1970-01-01,")
    assert sum("trusted again" in m for m in said) == 1
    # the jump, seen by the tick, reached the re-basing once
    assert sum("jumped +" in m and "retry schedules re-based" in m for m in said) == 1


def test_an_agent_set_back_below_its_newest_arrival_waits_for_the_clock_to_pass_it(
        tmp_path: Path, config_file: Path, running: list[Agent]) -> None:
    config_file.write_text(config_file.read_text() + "\n[clock]\nrequire_sync = false\n")
    flag = Flag(tmp_path, kernel=False)
    readings = Readings(time.time())
    agent = start(config_file, flag, readings, running)
    clock_of(agent, lambda c: c.trusted, "a plausible clock to be trusted")
    sent = dicomgen.write_series(tmp_path / "study", 1)
    port = str(agent.config.agent.port)
    result = subprocess.run([dcmtk("storescu"), "-aet", "MODALITY", "-aec", "EDGE", "+sd",
                             "127.0.0.1", port, str(sent[0].parent)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    wait_until(lambda: agent.status.snapshot().received == 1, 20, "the image")
    readings.set_wall(time.time() - 86400)  # someone sets the clock back a day
    state = clock_of(agent, lambda c: not c.plausible, "the clock set back to be doubted")
    assert state.why is not None and "earlier than the newest arrival" in state.why
    assert state.last_jump_seconds is not None and state.last_jump_seconds < -86000
    assert patterns.fault(agent.status.snapshot()) is patterns.FAULT_CLOCK
    readings.set_wall(time.time())  # set right again: trusted, nothing kept forever
    clock_of(agent, lambda c: c.trusted, "the clock to be trusted again")
    # after a restart, the index's newest arrival holds the clock as the model did
    agent.close()
    running.remove(agent)
    again = start(config_file, flag, Readings(time.time() - 86400), running)
    state = clock_of(again, lambda c: not c.plausible, "the restarted agent to doubt it")
    assert state.why is not None and "earlier than the newest arrival" in state.why
