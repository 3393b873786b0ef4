"""What each status LED shows for a status snapshot: pure, no pins, easy to test.

Four LEDs, each with a few signals (a pattern and its meaning). ``signals(snapshot)``
picks one per LED; ``hardware/leds.md`` is the technician's copy of ``SIGNALS``.
Fault priority, highest first: failed, disk below the floor, quarantined jobs or failed
commitments, a system clock not trusted, a TLS certificate to renew. An expired
certificate also blinks the link LED fast: every TLS peer refuses the box then, which is
a link fault first of all.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.status import Snapshot, State
from agent.status_mpps import mpps_quarantined
from agent.tls import CERTIFICATE_WARN_DAYS, certificate_days_left, certificate_warning

ACTIVITY_HOLD = 0.5  # seconds the activity LED keeps flickering after the last image


@dataclass(frozen=True)
class Pattern:
    """How an LED shows: off (no on time), steady on (no off time), or blinking."""

    name: str
    on_time: float
    off_time: float

    @property
    def steady_off(self) -> bool:
        """True if the LED is simply dark."""
        return self.on_time <= 0

    @property
    def steady_on(self) -> bool:
        """True if the LED is simply lit."""
        return self.on_time > 0 and self.off_time <= 0


OFF = Pattern("off", 0.0, 1.0)
STEADY = Pattern("steady on", 1.0, 0.0)
SLOW = Pattern("slow blink", 0.5, 0.5)  # 1 Hz
FAST = Pattern("fast blink", 0.1, 0.1)  # 5 Hz
FLICKER = Pattern("flicker", 0.04, 0.04)  # about 12 Hz, for a moment after each image
SHORT_FLASH = Pattern("short flash", 0.1, 1.9)  # a wink every 2 s: attention, nothing broken
LONG_FLASH = Pattern("long flash", 1.5, 0.5)  # mostly lit, dark for ½ s every 2 s


@dataclass(frozen=True)
class Signal:
    """One LED showing one pattern, and what that means to a technician."""

    led: str
    pattern: Pattern
    meaning: str


HEARTBEAT_STARTING = Signal("heartbeat", STEADY, "starting up")
HEARTBEAT_SERVING = Signal("heartbeat", SLOW, "alive and serving")
HEARTBEAT_STOPPING = Signal("heartbeat", FAST, "stopping")
HEARTBEAT_DOWN = Signal("heartbeat", OFF, "not running")
LINK_UP = Signal("link", STEADY, "last contact with the PACS succeeded")
LINK_RETRYING = Signal("link", SLOW, "forwarding is retrying, or a destination is down")
LINK_NONE = Signal("link", OFF, "no PACS configured, or not contacted yet")
LINK_CERT_EXPIRED = Signal("link", FAST, "the TLS certificate has expired")
ACTIVITY_BUSY = Signal("activity", FLICKER, "images are being received or sent")
ACTIVITY_IDLE = Signal("activity", OFF, "no images moving")
FAULT_FAILED = Signal("fault", STEADY, "the agent failed")
FAULT_DISK = Signal("fault", FAST, "disk below the free-space floor")
FAULT_QUARANTINE = Signal("fault", SLOW, "quarantined jobs or failed commitments")
FAULT_CLOCK = Signal("fault", LONG_FLASH, "the system clock is not trusted")
FAULT_CERTIFICATE = Signal(
    "fault", SHORT_FLASH,
    f"the TLS certificate expires within {CERTIFICATE_WARN_DAYS} days, or has expired")
FAULT_NONE = Signal("fault", OFF, "no fault")

SIGNALS: tuple[Signal, ...] = (
    HEARTBEAT_STARTING, HEARTBEAT_SERVING, HEARTBEAT_STOPPING, HEARTBEAT_DOWN,
    LINK_UP, LINK_RETRYING, LINK_CERT_EXPIRED, LINK_NONE,
    ACTIVITY_BUSY, ACTIVITY_IDLE,
    FAULT_FAILED, FAULT_DISK, FAULT_QUARANTINE, FAULT_CLOCK, FAULT_CERTIFICATE, FAULT_NONE,
)  # fmt: skip

_HEARTBEAT = {
    State.STARTING: HEARTBEAT_STARTING,
    State.SERVING: HEARTBEAT_SERVING,
    State.STOPPING: HEARTBEAT_STOPPING,
}


def signals(snapshot: Snapshot, *, active: bool) -> dict[str, Signal]:
    """The signal each LED shows for this snapshot (``active``: images moved just now)."""
    return {
        "heartbeat": heartbeat(snapshot),
        "link": link(snapshot),
        "activity": ACTIVITY_BUSY if active else ACTIVITY_IDLE,
        "fault": fault(snapshot),
    }


def heartbeat(snapshot: Snapshot) -> Signal:
    """Steady while starting, slow blink while serving, fast while stopping, else off."""
    return _HEARTBEAT.get(snapshot.state, HEARTBEAT_DOWN)


def certificate_expired(snapshot: Snapshot) -> bool:
    """True if the agent's TLS certificate is past its notAfter (False without TLS)."""
    left = certificate_days_left(snapshot.certificate_expires)
    return left is not None and left < 0


def link(snapshot: Snapshot) -> Signal:
    """Fast with an expired TLS certificate; slow while any destination retries or is
    down; lit once one was reached; else off."""
    if certificate_expired(snapshot):
        return LINK_CERT_EXPIRED
    destinations = snapshot.destinations
    if any(d.retrying or d.state == "down" for d in destinations):
        return LINK_RETRYING
    if any(d.last_success for d in destinations):
        return LINK_UP
    return LINK_NONE


def fault(snapshot: Snapshot) -> Signal:
    """The most urgent fault: failed, disk below the floor, quarantined jobs (instances or
    MPPS messages) or failed commitments, a system clock not trusted (age retention waits
    for it), then a TLS certificate within CERTIFICATE_WARN_DAYS of expiry (or past it)."""
    if snapshot.state is State.FAILED:
        return FAULT_FAILED
    if snapshot.below_floor:
        return FAULT_DISK
    if any(d.quarantined for d in snapshot.destinations) or snapshot.commit_failed or (
        mpps_quarantined(snapshot.mpps)
    ):
        return FAULT_QUARANTINE
    if not snapshot.clock.trusted:
        return FAULT_CLOCK
    if certificate_warning(snapshot.certificate_expires):
        return FAULT_CERTIFICATE
    return FAULT_NONE


def traffic(snapshot: Snapshot) -> int:
    """A counter that grows with every image received or forwarded."""
    return snapshot.received + snapshot.duplicates + snapshot.conflicts + snapshot.forwarded


class ActivityWatch:
    """Turns counters that changed between snapshots into 'busy' for a short while."""

    def __init__(self, *, hold: float = ACTIVITY_HOLD) -> None:
        self._hold = hold
        self._count: int | None = None
        self._until = 0.0

    def update(self, snapshot: Snapshot, now: float) -> bool:
        """True if images moved within the last ``hold`` seconds (``now``: monotonic)."""
        count = traffic(snapshot)
        if self._count is not None and count != self._count:
            self._until = now + self._hold
        self._count = count
        return now < self._until

    @property
    def busy_until(self) -> float:
        """Monotonic time the flicker ends, unless more images move."""
        return self._until
