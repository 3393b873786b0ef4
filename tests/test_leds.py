"""Status LEDs: the pure mapping, the driver on gpiozero's mock pins, the agent, the CLI."""

from __future__ import annotations

import datetime as dt
import importlib.util
import io
import logging
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dicomgen
import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory, MockPin

from agent import cli
from agent import config as config_module
from agent.field import patterns as p
from agent.field.box import BoxAgent
from agent.field.leds import StatusLeds, walk_patterns
from agent.field.settings import LedSettings
from agent.status import (
    STUCK_AFTER,
    Destination,
    Snapshot,
    State,
    StatusModel,
)
from agent.tls import CERTIFICATE_WARN_DAYS
from tests import scu
from tests.support import (
    REPO,
    AgentProcess,
    agent_env,
    free_port,
    peer,
    run_cli,
    wait_until,
    write_config,
)

PINS = {"heartbeat": 17, "link": 27, "activity": 22, "fault": 23}
SETTINGS = LedSettings(**PINS)
LEDS_TOML = "\n[leds]\n" + "".join(f"{name} = {pin}\n" for name, pin in PINS.items())
NO_SUCH_FACTORY = "no-such-pin-factory"


# --- fixtures and helpers ---------------------------------------------------------------


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    """A fresh mock pin factory, cleaned up after the test."""
    mock = MockFactory()
    try:
        yield mock
    finally:
        mock.reset()


@pytest.fixture
def default_factory(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No pin factory chosen yet, as in a fresh process; restored after the test."""
    saved = Device.pin_factory
    Device.pin_factory = None
    try:
        yield
    finally:
        if Device.pin_factory is not None and Device.pin_factory is not saved:
            Device.pin_factory.close()
        Device.pin_factory = saved


@pytest.fixture
def global_mock(default_factory: None) -> Iterator[MockFactory]:
    """gpiozero's default factory replaced by mock pins, as its own tests do."""
    mock = MockFactory()
    Device.pin_factory = mock
    yield mock
    mock.reset()


@pytest.fixture
def model() -> StatusModel:
    return StatusModel()


@pytest.fixture
def leds(model: StatusModel, factory: MockFactory) -> Iterator[StatusLeds]:
    with StatusLeds(model, SETTINGS, pin_factory=factory) as running:
        yield running


def pin(factory: MockFactory, name: str) -> MockPin:
    return factory.pin(PINS[name])


def durations(mock: MockPin, lit: bool = True) -> list[float]:
    """How long the pin stayed lit (or dark) each time, from its recorded changes."""
    # each entry holds the time since the previous change, so an entry that turns the
    # pin off says how long it was on; skip the first, which may be cut short
    return [t for t, state in mock.states[2:] if state is not lit]


def assert_blinks(mock: MockPin, pattern: p.Pattern, lit: bool = True) -> None:
    """The pin blinks with roughly the pattern's on and off times."""
    mock.clear_states()
    wait_until(lambda: len(mock.states) >= 6, 10, f"{pattern.name} on {mock}")
    for seconds, expected in ((durations(mock, lit), pattern.on_time),
                              (durations(mock, not lit), pattern.off_time)):
        middle = sorted(seconds)[len(seconds) // 2]
        assert expected * 0.5 <= middle <= expected * 2 + 0.1, (seconds, pattern)


def assert_steady(mock: MockPin, on: bool, lit: bool = True) -> None:
    assert mock.state is (on if lit else not on)


def await_pattern(leds: StatusLeds, name: str, pattern: p.Pattern) -> None:
    wait_until(lambda: leds.showing.get(name) == pattern, 10, f"{name} {pattern.name}")


def leds_config(tmp_path: Path, data_dir: Path, extra: str = LEDS_TOML) -> Path:
    path = write_config(
        tmp_path / "agent.toml",
        {"ae_title": "EDGE", "port": free_port(), "bind": "127.0.0.1",
         "data_dir": str(data_dir), "min_free_mb": 0},
        {"CT": peer("MODALITY", allow=("echo", "store"))},
    )
    path.write_text(path.read_text() + extra)
    return path


# --- the pure mapping --------------------------------------------------------------------


@pytest.mark.parametrize(("state", "expected"), [
    (State.STARTING, p.STEADY), (State.SERVING, p.SLOW), (State.STOPPING, p.FAST),
    (State.STOPPED, p.OFF), (State.FAILED, p.OFF)])
def test_heartbeat_follows_the_life_cycle(state: State, expected: p.Pattern) -> None:
    assert p.heartbeat(Snapshot(state=state)).pattern == expected


@pytest.mark.parametrize(("destinations", "expected"), [
    ((), p.OFF),
    ((Destination("PACS"),), p.OFF),
    ((Destination("PACS", last_success="2026-01-01T00:00:00+00:00"),), p.STEADY),
    ((Destination("PACS", pending=3, last_success="t"),), p.STEADY),
    ((Destination("PACS", quarantined=2, last_success="t"),), p.STEADY),
    ((Destination("A", last_success="t"), Destination("B", retrying=1)), p.SLOW),
    ((Destination("PACS", retrying=1),), p.SLOW),
    ((Destination("PACS", pending=9, last_success="t", state="down"),), p.SLOW)])
def test_link_shows_contact_with_the_destinations(destinations: tuple[Destination, ...],
                                                  expected: p.Pattern) -> None:
    assert p.link(Snapshot(destinations=destinations)).pattern == expected


@pytest.mark.parametrize(("snapshot", "expected"), [
    (Snapshot(state=State.SERVING), p.FAULT_NONE),
    (Snapshot(destinations=(Destination("P", quarantined=1),)), p.FAULT_QUARANTINE),
    (Snapshot(below_floor=True, destinations=(Destination("P", quarantined=1),)),
     p.FAULT_DISK),
    (Snapshot(state=State.FAILED, below_floor=True,
              destinations=(Destination("P", quarantined=1),)), p.FAULT_FAILED)])
def test_fault_shows_the_most_urgent_problem(snapshot: Snapshot, expected: p.Signal) -> None:
    assert p.fault(snapshot) == expected


def expires_in(days: float) -> str:
    """A certificate notAfter ``days`` from now (negative: in the past), as the model keeps it."""
    moment = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=days)
    return moment.isoformat(timespec="seconds")


@pytest.mark.parametrize(("days", "fault", "link"), [
    (None, p.FAULT_NONE, p.LINK_NONE),
    (CERTIFICATE_WARN_DAYS + 1, p.FAULT_NONE, p.LINK_NONE),
    (CERTIFICATE_WARN_DAYS - 1, p.FAULT_CERTIFICATE, p.LINK_NONE),
    (0.5, p.FAULT_CERTIFICATE, p.LINK_NONE),
    (-0.5, p.FAULT_CERTIFICATE, p.LINK_CERT_EXPIRED)])
def test_the_certificate_shows_from_30_days_before_expiry(
        days: float | None, fault: p.Signal, link: p.Signal) -> None:
    snapshot = Snapshot(certificate_expires=None if days is None else expires_in(days))
    assert (p.fault(snapshot), p.link(snapshot)) == (fault, link)


def test_an_expired_certificate_outranks_the_link_and_yields_to_real_faults() -> None:
    expired = expires_in(-3)
    retrying = (Destination("PACS", retrying=2, last_success="t"),)
    assert p.link(Snapshot(certificate_expires=expired, destinations=retrying)) == \
        p.LINK_CERT_EXPIRED
    quarantined = (Destination("PACS", quarantined=1),)
    assert p.fault(Snapshot(certificate_expires=expired, destinations=quarantined)) == \
        p.FAULT_QUARANTINE
    assert p.fault(Snapshot(certificate_expires=expired, below_floor=True)) == p.FAULT_DISK


def test_activity_holds_for_a_moment_after_a_counter_moves() -> None:
    watch = p.ActivityWatch(hold=0.5)
    assert not watch.update(Snapshot(received=5), 100.0)  # the first look is a baseline
    assert not watch.update(Snapshot(received=5), 100.1)
    assert watch.update(Snapshot(received=6), 100.2)
    assert watch.update(Snapshot(received=6), 100.6)
    assert not watch.update(Snapshot(received=6), 100.8)
    for moved in (Snapshot(received=6, duplicates=1), Snapshot(received=6, duplicates=1,
                                                               conflicts=1, forwarded=1)):
        assert watch.update(moved, 101.0)


def test_every_led_has_distinct_patterns_and_the_manual_names_every_signal() -> None:
    manual = (REPO / "hardware" / "leds.md").read_text()
    for name in PINS:
        own = [s.pattern for s in p.SIGNALS if s.led == name]
        assert len(own) == len(set(own)) >= 2
    for signal in p.SIGNALS:
        row = f"| {signal.led} | {signal.pattern.name} | {signal.meaning} |"
        assert row in manual


def test_forwarded_counts_deliveries(model: StatusModel) -> None:
    model.forwarded("PACS")
    model.forwarded("PACS")
    snapshot = model.snapshot()
    assert snapshot.forwarded == 2 and snapshot.destinations[0].last_success


# --- the driver on mock pins, for each state of a real StatusModel ----------------------


def test_starting_lights_the_heartbeat_steadily(leds: StatusLeds, factory: MockFactory
                                                ) -> None:
    await_pattern(leds, "heartbeat", p.STEADY)
    assert_steady(pin(factory, "heartbeat"), on=True)
    for name in ("link", "activity", "fault"):
        assert_steady(pin(factory, name), on=False)


def test_serving_blinks_the_heartbeat_once_a_second(leds: StatusLeds, model: StatusModel,
                                                   factory: MockFactory) -> None:
    model.set_state(State.SERVING)
    await_pattern(leds, "heartbeat", p.SLOW)
    assert_blinks(pin(factory, "heartbeat"), p.SLOW)
    assert_steady(pin(factory, "fault"), on=False)


def test_receiving_flickers_the_activity_led_then_it_goes_dark(
        leds: StatusLeds, model: StatusModel, factory: MockFactory) -> None:
    model.set_state(State.SERVING)
    activity = pin(factory, "activity")
    activity.clear_states()
    model.stored("stored", 1000)
    wait_until(lambda: len(activity.states) >= 4, 10, "the activity LED to flicker")
    await_pattern(leds, "activity", p.OFF)
    assert_steady(activity, on=False)


def test_a_delivery_lights_the_link_and_flickers_activity(
        leds: StatusLeds, model: StatusModel, factory: MockFactory) -> None:
    model.queue_depth({}, ("PACS",))
    await_pattern(leds, "link", p.OFF)
    pin(factory, "activity").clear_states()
    model.forwarded("PACS")
    await_pattern(leds, "link", p.STEADY)
    assert_steady(pin(factory, "link"), on=True)
    wait_until(lambda: len(pin(factory, "activity").states) >= 3, 10, "activity")


def test_retrying_blinks_the_link(leds: StatusLeds, model: StatusModel,
                                  factory: MockFactory) -> None:
    model.forwarded("PACS")
    model.forward_failed("PACS", "transient: connection refused")
    model.queue_depth({"PACS": {"retrying": 4}}, ("PACS",))
    await_pattern(leds, "link", p.SLOW)
    assert_blinks(pin(factory, "link"), p.SLOW)
    model.queue_depth({"PACS": {}}, ("PACS",))
    await_pattern(leds, "link", p.STEADY)


def test_quarantined_jobs_blink_the_fault_led_slowly(
        leds: StatusLeds, model: StatusModel, factory: MockFactory) -> None:
    model.queue_depth({"PACS": {"quarantined": 1}}, ("PACS",))
    await_pattern(leds, "fault", p.SLOW)
    assert_blinks(pin(factory, "fault"), p.SLOW)


def test_disk_below_the_floor_blinks_the_fault_led_fast_over_quarantine(
        leds: StatusLeds, model: StatusModel, factory: MockFactory) -> None:
    model.queue_depth({"PACS": {"quarantined": 1}}, ("PACS",))
    model.disk(10, below_floor=True)
    await_pattern(leds, "fault", p.FAST)
    assert_blinks(pin(factory, "fault"), p.FAST)
    model.disk(10 << 30, below_floor=False)
    await_pattern(leds, "fault", p.SLOW)


def test_a_certificate_near_expiry_winks_the_fault_led_and_expired_blinks_the_link(
        leds: StatusLeds, model: StatusModel, factory: MockFactory) -> None:
    model.forwarded("PACS")
    await_pattern(leds, "link", p.STEADY)
    model.certificate(expires_in(10))
    await_pattern(leds, "fault", p.SHORT_FLASH)
    assert_blinks(pin(factory, "fault"), p.SHORT_FLASH)
    assert leds.showing["link"] == p.STEADY  # still valid: the links are fine
    model.certificate(expires_in(-1))
    await_pattern(leds, "link", p.FAST)
    assert_blinks(pin(factory, "link"), p.FAST)
    assert leds.showing["fault"] == p.SHORT_FLASH
    model.certificate(expires_in(365))  # renewed and reloaded
    await_pattern(leds, "fault", p.OFF)
    await_pattern(leds, "link", p.STEADY)
    assert_steady(pin(factory, "fault"), on=False)


def test_failed_lights_the_fault_led_and_darkens_the_heartbeat(
        leds: StatusLeds, model: StatusModel, factory: MockFactory) -> None:
    model.set_state(State.SERVING)
    model.disk(10, below_floor=True)
    model.set_state(State.FAILED)
    await_pattern(leds, "fault", p.STEADY)
    await_pattern(leds, "heartbeat", p.OFF)
    assert_steady(pin(factory, "fault"), on=True)
    assert_steady(pin(factory, "heartbeat"), on=False)


def test_an_agent_whose_health_checks_stop_shows_failed_until_they_pass_again(
        leds: StatusLeds, model: StatusModel, factory: MockFactory) -> None:
    # the LEDs blink from gpiozero's own thread: a hung agent must not keep looking alive
    model.set_state(State.SERVING)
    model.beat()
    await_pattern(leds, "heartbeat", p.SLOW)
    model.beat(at=time.monotonic() - STUCK_AFTER - 1)
    await_pattern(leds, "heartbeat", p.OFF)
    await_pattern(leds, "fault", p.STEADY)
    stuck = model.snapshot()
    assert stuck.state is State.FAILED and stuck.last_error.startswith("not answering")
    assert stuck.silent_for is not None and stuck.silent_for > STUCK_AFTER
    model.beat()
    await_pattern(leds, "heartbeat", p.SLOW)
    await_pattern(leds, "fault", p.OFF)


def test_stopping_then_stopped_then_closed(model: StatusModel, factory: MockFactory) -> None:
    running = StatusLeds(model, SETTINGS, pin_factory=factory)
    model.set_state(State.STOPPING)
    await_pattern(running, "heartbeat", p.FAST)
    assert_blinks(pin(factory, "heartbeat"), p.FAST)
    model.set_state(State.STOPPED)
    await_pattern(running, "heartbeat", p.OFF)
    model.set_state(State.FAILED)
    await_pattern(running, "fault", p.STEADY)
    running.close()
    running.close()  # closing twice is harmless
    assert all(not pin(factory, name).state for name in PINS)
    assert all(pin(factory, name).function == "input" for name in PINS)  # pins given back
    assert not any(t.name == "status-leds" for t in threading.enumerate())


def test_active_low_leds_light_when_the_pin_is_low(model: StatusModel,
                                                   factory: MockFactory) -> None:
    settings = LedSettings(heartbeat=17, fault=23, active_high=False)
    with StatusLeds(model, settings, pin_factory=factory) as running:
        await_pattern(running, "heartbeat", p.STEADY)
        assert_steady(pin(factory, "heartbeat"), on=True, lit=False)
        assert_steady(pin(factory, "fault"), on=False, lit=False)
        model.set_state(State.SERVING)
        await_pattern(running, "heartbeat", p.SLOW)
        assert_blinks(pin(factory, "heartbeat"), p.SLOW, lit=False)
        assert set(running.leds) == {"heartbeat", "fault"}


def test_no_leds_configured_is_a_silent_no_op(model: StatusModel,
                                              caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="agent.field"), \
            StatusLeds(model, LedSettings()) as running:
        assert running.leds == {} and running.showing == {}
    assert not caplog.records


def test_without_gpio_the_leds_are_off_and_say_so_once(
        model: StatusModel, default_factory: None, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", NO_SUCH_FACTORY)
    with caplog.at_level(logging.INFO, logger="agent.field"), \
            StatusLeds(model, SETTINGS) as running:
        assert running.leds == {}
        model.set_state(State.SERVING)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "status LEDs are off: no GPIO available" in messages[0]
    assert caplog.records[0].levelno == logging.WARNING


@pytest.mark.skipif(importlib.util.find_spec("lgpio") is not None, reason="lgpio is installed")
def test_a_pin_factory_whose_library_is_missing_says_what_to_install(
        model: StatusModel, default_factory: None, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "lgpio")  # what the systemd unit sets
    with caplog.at_level(logging.WARNING, logger="agent.field"), \
            StatusLeds(model, SETTINGS) as running:
        assert running.leds == {}
    assert [r.getMessage() for r in caplog.records] == [
        "status LEDs are off: no GPIO available: the pin factory's library is missing "
        "(No module named 'lgpio'); on Raspberry Pi OS: apt install python3-lgpio"]


# --- the agent ----------------------------------------------------------------------------


def test_the_agent_blinks_its_heartbeat_and_flickers_activity_on_a_store(
        tmp_path: Path, data_dir: Path, global_mock: MockFactory) -> None:
    config = config_module.load_file(leds_config(tmp_path, data_dir))
    sent = dicomgen.write_series(tmp_path / "ct", 1, modality="CT", size=16)
    with BoxAgent(config) as running:
        assert running.leds is not None
        await_pattern(running.leds, "heartbeat", p.SLOW)
        assert_blinks(pin(global_mock, "heartbeat"), p.SLOW)
        activity = pin(global_mock, "activity")
        activity.clear_states()
        assert scu.store(running.server.port, sent) == [0]  # type: ignore[union-attr]
        wait_until(lambda: len(activity.states) >= 4, 10, "the activity LED to flicker")
        assert running.leds.showing["link"] == p.OFF  # no forwarding configured
    assert all(not pin(global_mock, name).state for name in PINS)


def test_the_agent_serves_without_gpio_and_logs_it_once(
        tmp_path: Path, data_dir: Path, default_factory: None,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", NO_SUCH_FACTORY)
    config = config_module.load_file(leds_config(tmp_path, data_dir))
    sent = dicomgen.write_series(tmp_path / "ct", 1, modality="CT", size=16)
    with caplog.at_level(logging.INFO), BoxAgent(config) as running:
        assert running.status.snapshot().state is State.SERVING
        assert scu.store(running.server.port, sent) == [0]  # type: ignore[union-attr]
    led_lines = [r for r in caplog.records if "LED" in r.getMessage()]
    assert len(led_lines) == 1 and "no GPIO available" in led_lines[0].getMessage()


def looks_like_a_pi() -> bool:
    return any(Path(f"/dev/gpiochip{n}").exists() for n in range(5))


@pytest.mark.skipif(looks_like_a_pi(), reason="this machine has GPIO")
def test_the_agent_process_on_a_machine_without_gpio(tmp_path: Path, data_dir: Path) -> None:
    process = AgentProcess(leds_config(tmp_path, data_dir), data_dir)
    try:
        process.start()
    finally:
        assert process.stop() == 0
    log = process.log.read_text()
    assert log.count("status LEDs are off: no GPIO available") == 1, log
    assert "Traceback" not in log and "PinFactoryFallback" not in log


# --- edge-agent leds --test and walk_patterns ----------------------------------------


def named_lines() -> list[str]:
    return [f"{s.led}: {s.meaning} — {s.pattern.name}"
            for s in p.SIGNALS if not s.pattern.steady_off]


def test_walk_patterns_names_every_pattern_and_drives_the_pins(factory: MockFactory) -> None:
    out = io.StringIO()
    walk_patterns(SETTINGS, out, step=0.3, pin_factory=factory)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("all LEDs: lamp test")
    assert lines[1:-1] == named_lines()
    assert lines[-1].startswith("all LEDs: off")
    for name in PINS:
        states = pin(factory, name).states
        assert len(states) >= 3, (name, states)  # lit at least twice: lamp test, patterns
        assert states[-1].state is False and pin(factory, name).function == "input"
    assert len(pin(factory, "fault").states) >= 8  # the blinks toggled it


def test_walk_patterns_stops_when_asked(factory: MockFactory) -> None:
    stop = threading.Event()
    stop.set()
    out = io.StringIO()
    walk_patterns(SETTINGS, out, step=30, pin_factory=factory, stop=stop)
    assert len(out.getvalue().splitlines()) == 1
    assert not any(pin(factory, name).state for name in PINS)


def test_leds_test_command_in_process(tmp_path: Path, data_dir: Path, global_mock: MockFactory,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    config = leds_config(tmp_path, data_dir)
    assert cli.main(["leds", "--test", "--step", "0.2", "--config", str(config)]) == 0
    assert named_lines() == capsys.readouterr().out.splitlines()[1:-1]
    assert all(len(pin(global_mock, name).states) >= 3 for name in PINS)


def test_leds_test_command_with_the_mock_factory(tmp_path: Path, data_dir: Path) -> None:
    env = {**agent_env(), "GPIOZERO_PIN_FACTORY": "mock"}
    config = leds_config(tmp_path, data_dir)
    result = run_cli("leds", "--test", "--step", "0.05", "--config", str(config), env=env)
    assert result.returncode == 0, result.stderr
    for line in named_lines():
        assert line in result.stdout
    assert result.stderr == ""


def test_leds_test_without_gpio_says_so_and_exits_1(tmp_path: Path, data_dir: Path) -> None:
    env = {**agent_env(), "GPIOZERO_PIN_FACTORY": NO_SUCH_FACTORY}
    result = run_cli("leds", "--test", "--step", "0.05", "--config",
                     str(leds_config(tmp_path, data_dir)), env=env)
    assert result.returncode == 1
    assert re.fullmatch(r"edge-agent: no GPIO available: .*\n", result.stderr), result.stderr


def test_leds_without_pins_or_with_a_bad_step(tmp_path: Path, data_dir: Path) -> None:
    bare = leds_config(tmp_path, data_dir, extra="")
    result = run_cli("leds", "--test", "--config", str(bare))
    assert result.returncode == 1 and "no status LEDs are configured" in result.stderr
    result = run_cli("leds", "--test", "--step", "0", "--config", str(bare))
    assert result.returncode == 2 and "--step" in result.stderr


def test_leds_lists_pins_and_meanings(tmp_path: Path, data_dir: Path) -> None:
    config = leds_config(tmp_path, data_dir, extra="\n[leds]\nfault = 23\n")
    result = run_cli("leds", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "fault (GPIO23)" in result.stdout and "heartbeat (not fitted)" in result.stdout
    assert "quarantined jobs" in result.stdout
