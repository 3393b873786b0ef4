"""The status LEDs: gpiozero devices that show the one status model.

``StatusLeds`` reads ``StatusModel.snapshot()`` whenever the model changes (at most 20
times a second, and once a second without a change) and changes an LED only when
its pattern changes (``agent.field.patterns`` decides which). Without GPIO the agent
runs as usual with the LEDs dark, and says so once. ``walk_patterns`` is the lamp test
behind ``edge-agent leds --test`` and the console's ``leds test``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import warnings
from collections.abc import Mapping
from typing import Any, TextIO

from agent import threads
from agent.errors import AgentError
from agent.field.patterns import SIGNALS, ActivityWatch, Pattern, signals
from agent.field.settings import LedSettings
from agent.status import StatusModel

log = logging.getLogger(__name__)

IDLE_WAKE = 1.0  # without a change, look again this often (a stuck agent shows no change)
MIN_GAP = 0.05  # during a transfer the model changes per image: refresh at most 20 times/s
JOIN_TIMEOUT = 2.0


class LedError(AgentError, RuntimeError):
    """The status LEDs cannot be driven: none configured, or no usable GPIO."""


def open_leds(settings: LedSettings, *, pin_factory: Any = None) -> dict[str, Any]:
    """A gpiozero LED, off, for every fitted pin; LedError if the pins cannot be driven."""
    try:
        from gpiozero import LED
    except ImportError as exc:
        raise LedError(f"no GPIO available: gpiozero is not installed ({exc})") from None
    leds: dict[str, Any] = {}
    with warnings.catch_warnings(record=True) as fallbacks:
        warnings.simplefilter("always")
        name, pin = "", 0
        try:
            for name, pin in settings.pins().items():
                leds[name] = LED(
                    pin,
                    active_high=settings.active_high,
                    initial_value=False,
                    pin_factory=pin_factory,
                )
        except Exception as exc:
            close_leds(leds)
            raise LedError(_reason(exc, name, pin)) from exc
        finally:
            for caught in fallbacks:
                log.debug("gpiozero: %s", caught.message)
    return leds


def _reason(exc: Exception, name: str, pin: int) -> str:
    """Why gpiozero could not give us a pin, in plain words."""
    if type(exc).__name__ == "BadPinFactory":
        return f"no GPIO available: this machine has no GPIO gpiozero can use ({exc})"
    if isinstance(exc, ImportError):  # GPIOZERO_PIN_FACTORY names a library not installed
        return (
            f"no GPIO available: the pin factory's library is missing ({exc}); "
            "on Raspberry Pi OS: apt install python3-lgpio"
        )
    return f"cannot use GPIO{pin} for the {name} LED ({type(exc).__name__}: {exc})"


def show(led: Any, pattern: Pattern) -> None:
    """Put one gpiozero LED into a pattern (blinking runs in gpiozero's own thread)."""
    if pattern.steady_off:
        led.off()
    elif pattern.steady_on:
        led.on()
    else:
        led.blink(on_time=pattern.on_time, off_time=pattern.off_time, background=True)


def close_leds(leds: Mapping[str, Any]) -> None:
    """Turn every LED off and give its pin back; never raises."""
    for led in leds.values():
        with contextlib.suppress(Exception):
            led.off()
        with contextlib.suppress(Exception):
            led.close()


class StatusLeds(threads.Worker):
    """The fitted status LEDs, kept in step with the status model by a thread."""

    def __init__(
        self,
        status: StatusModel,
        settings: LedSettings,
        *,
        pin_factory: Any = None,
    ) -> None:
        super().__init__("status-leds", JOIN_TIMEOUT)
        self._status = status
        self._lock = threading.Lock()
        self._shown: dict[str, Pattern] = {}
        self._activity = ActivityWatch()
        self._failing = False
        self._leds = _open_quietly(settings, pin_factory)
        if self._leds:
            self._refresh()
            self.start()

    @property
    def leds(self) -> Mapping[str, Any]:
        """The gpiozero LED of each fitted LED by name (empty when the LEDs are off)."""
        return dict(self._leds)

    @property
    def showing(self) -> dict[str, Pattern]:
        """The pattern each fitted LED shows now."""
        with self._lock:
            return dict(self._shown)

    def close(self, timeout: float | None = None) -> None:
        """Stop the thread, turn the LEDs off and release their pins."""
        super().close(timeout)
        with self._lock:
            close_leds(self._leds)
            self._leds = {}

    def _interrupt(self) -> None:
        """The thread waits for a change of the model: make one."""
        self._status.nudge()

    def run(self) -> None:
        """Follow the model until closed: woken by its changes, not by polling."""
        while not self.stopping:
            version = self._refresh()
            now = time.monotonic()
            flicker_left = self._activity.busy_until - now
            wait = min(IDLE_WAKE, flicker_left) if flicker_left > 0 else IDLE_WAKE
            self._status.wait_for_change(version, wait)
            self.rest(MIN_GAP)

    def _refresh(self) -> int:
        """Show the current snapshot, changing only LEDs whose pattern changed; its version."""
        snapshot = self._status.snapshot()
        try:
            with self._lock:
                active = self._activity.update(snapshot, time.monotonic())
                for name, signal in signals(snapshot, active=active).items():
                    led = self._leds.get(name)
                    if led is not None and self._shown.get(name) != signal.pattern:
                        show(led, signal.pattern)
                        self._shown[name] = signal.pattern
            self._failing = False
        except Exception:  # the LEDs must never take the agent down
            if not self._failing:
                log.exception("status LEDs could not be updated; trying again")
            self._failing = True
        return snapshot.version


def _open_quietly(settings: LedSettings, pin_factory: Any) -> dict[str, Any]:
    """The LEDs, or none: silent when none are fitted, one warning when GPIO is missing."""
    if not settings.pins():
        return {}
    try:
        leds = open_leds(settings, pin_factory=pin_factory)
    except Exception as exc:
        log.warning("status LEDs are off: %s", exc)
        return {}
    log.info("status LEDs on %s", ", ".join(f"{n} GPIO{p}" for n, p in settings.pins().items()))
    return leds


def walk_patterns(
    settings: LedSettings,
    out: TextIO,
    *,
    step: float,
    pin_factory: Any = None,
    stop: threading.Event | None = None,
) -> None:
    """Show every pattern on every fitted LED for ``step`` seconds, naming each on ``out``."""
    if not settings.pins():
        raise LedError("no status LEDs are configured: give their BCM pins under [leds]")
    leds = open_leds(settings, pin_factory=pin_factory)
    stop = stop or threading.Event()
    try:
        _say(out, "all LEDs: lamp test — steady on")
        for led in leds.values():
            led.on()
        if stop.wait(step):
            return
        for name, led in leds.items():
            for signal in SIGNALS:
                if signal.led == name and not signal.pattern.steady_off:
                    _all_off(leds)
                    show(led, signal.pattern)
                    _say(out, f"{name}: {signal.meaning} — {signal.pattern.name}")
                    if stop.wait(step):
                        return
        _all_off(leds)
        _say(out, "all LEDs: off — test done")
    finally:
        close_leds(leds)


def _all_off(leds: Mapping[str, Any]) -> None:
    for led in leds.values():
        led.off()


def _say(out: TextIO, line: str) -> None:
    out.write(line + "\n")
    out.flush()
