"""The ``[leds]`` and ``[console]`` tables: the box's hardware, each part optional.

```toml
[leds]
heartbeat = 17   # BCM pin numbers; leave a key out to go without that LED
link = 27
activity = 22
fault = 23
active_high = true

[console]
device = "/dev/ttyGS0"   # or /dev/serial0, /dev/ttyUSB0
baud = 115200
```
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent import validation as v
from agent.errors import ConfigError

LED_NAMES = ("heartbeat", "link", "activity", "fault")
BAUD_RATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)
_HIGHEST_BCM_PIN = 27


@dataclass(frozen=True)
class LedSettings:
    """BCM pin of each status LED (None: not fitted) and the pins' polarity."""

    heartbeat: int | None = None
    link: int | None = None
    activity: int | None = None
    fault: int | None = None
    active_high: bool = True

    def pins(self) -> dict[str, int]:
        """The fitted LEDs by name."""
        fitted = {name: getattr(self, name) for name in LED_NAMES}
        return {name: pin for name, pin in fitted.items() if pin is not None}


@dataclass(frozen=True)
class ConsoleSettings:
    """The serial port of the field console (None: no console)."""

    device: str | None = None
    baud: int = 115200


def parse_leds(table: Mapping[str, Any]) -> LedSettings:
    """Validate ``[leds]``: pins 0-27, each used once."""
    v.reject_unknown(table, {*LED_NAMES, "active_high"}, "leds")
    pins: dict[str, int | None] = {}
    used: dict[int, str] = {}
    for name in LED_NAMES:
        key = f"leds.{name}"
        pin = v.get(table, key, int, None, _bcm_pin) if name in table else None
        if pin is not None and pin in used:
            v.problem(ConfigError(key, f"pin {pin} is already used by leds.{used[pin]}"))
        if pin is not None:
            used[pin] = name
        pins[name] = pin
    active_high = v.get(table, "leds.active_high", bool, True, None)
    return LedSettings(active_high=active_high, **pins)


def parse_console(table: Mapping[str, Any]) -> ConsoleSettings:
    """Validate ``[console]``: an absolute device path and a standard baud rate."""
    v.reject_unknown(table, {"device", "baud"}, "console")
    device = v.get(table, "console.device", str, None, _device) if "device" in table else None
    baud = v.get(table, "console.baud", int, 115200, _baud)
    return ConsoleSettings(device=device, baud=baud)


def _bcm_pin(key: str, value: int) -> None:
    if not 0 <= value <= _HIGHEST_BCM_PIN:
        raise ConfigError(key, f"a BCM pin number is 0-{_HIGHEST_BCM_PIN}, not {value}")


def _device(key: str, value: str) -> None:
    if not value.startswith("/dev/") or ".." in value.split("/"):
        raise ConfigError(key, f"a serial device is a path under /dev/, not {value!r}")


def _baud(key: str, value: int) -> None:
    if value not in BAUD_RATES:
        raise ConfigError(key, f"must be one of {', '.join(map(str, BAUD_RATES))}")
