"""Whether the system clock can be believed: synchronised, plausible, trusted.

A Raspberry Pi has no real-time clock: it boots at the last saved time (fake-hwclock) or
at 1970 until NTP answers, and an isolated modality network may have no NTP at all. The
agent stamps arrivals and ages retention by the wall clock, so it judges that clock once
per housekeeping tick (``ClockJudge.tick``):

- **synchronised**: the kernel says a time source disciplines the clock (``adjtimex``:
  neither TIME_ERROR nor STA_UNSYNC), or systemd-timesyncd has synchronised it since boot
  (its flag file exists). Either suffices; None when neither can be read.
- **plausible**: not before this software's release; not before the newest arrival the
  index holds (unless synchronised: a time source outranks a stamp an earlier wrong clock
  made); and no jump (the wall clock stepping more than ``max_jump_seconds`` against the
  monotonic clock between ticks) that a time source has not confirmed. A jump forward or
  back is implausible until the clock is synchronised at or after it: a box may have
  been set a year ahead by hand, and retention must not act on that. Without a time
  source to wait for (``[clock] require_sync = false``) nothing could confirm a jump, so
  the release and arrival rules judge alone.
- **trusted**: plausible, and synchronised unless ``require_sync`` is false.

Every judgement is made afresh each tick: once the clock is synchronised again (or,
without a time source, past the newest arrival again) trust returns; nothing is kept
forever. A jump is reported once, on the tick that sees it, so schedules can be re-based.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime as dt
import functools
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config import ClockSettings
from agent.status_parts import ClockState

# This version's release date: a clock that reads earlier is certainly wrong (a Pi that
# booted at 1970, or at a fake-hwclock file older than the software). Move it forward
# with each release.
RELEASE = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
# Arrivals are stamped to the second and NTP slews by small amounts: a clock this little
# behind the newest arrival is still plausible.
ARRIVAL_TOLERANCE = 60.0
TIMESYNCD_FLAG = Path("/run/systemd/timesync/synchronized")
TIME_ERROR = 5  # adjtimex's return: the clock is not synchronised
STA_UNSYNC = 0x0040  # adjtimex's status bit: the clock is not synchronised


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    """Linux's ``struct timex`` (<sys/timex.h>), as far as reading it needs."""

    _fields_ = [
        ("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
        ("constant", ctypes.c_long), ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long), ("time", _Timeval), ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long), ("jitter", ctypes.c_long), ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long), ("jitcnt", ctypes.c_long), ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long), ("stbcnt", ctypes.c_long), ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 32),  # the kernel's padding, and then some
    ]  # fmt: skip


def adjtimex() -> tuple[int, int] | None:
    """The kernel's clock state and status bits (``adjtimex`` with no change asked: any
    user may read them), or None where there is no such call (not Linux, no libc)."""
    call = _adjtimex_call()
    if call is None:
        return None
    timex = _Timex()  # modes 0: read only
    state = int(call(ctypes.byref(timex)))
    return None if state < 0 else (state, int(timex.status))


@functools.cache
def _adjtimex_call() -> Callable[[Any], int] | None:
    """libc's adjtimex, looked up once (finding libc may run ldconfig: not every tick)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        call: Callable[[Any], int] = libc.adjtimex
    except (OSError, AttributeError):
        return None
    return call


def kernel_synchronised() -> bool | None:
    """The kernel's word: a time source disciplines the clock (None: cannot be asked)."""
    found = adjtimex()
    if found is None:
        return None
    state, status = found
    return state != TIME_ERROR and not status & STA_UNSYNC


@dataclass(frozen=True)
class SyncSources:
    """Where the agent learns whether the clock is synchronised; tests replace both."""

    kernel: Callable[[], bool | None] = kernel_synchronised
    timesyncd_flag: Path = TIMESYNCD_FLAG

    def synchronised(self) -> bool | None:
        """True if either source says so; False if the kernel says not; None: no word."""
        kernel = self.kernel()
        if kernel or self.timesyncd_flag.exists():
            return True
        return kernel


@dataclass(frozen=True)
class ClockTick:
    """One tick's judgement: the state to show, and a jump first seen now (seconds,
    forward + or back -; None: no jump this tick), for re-basing schedules."""

    state: ClockState
    jump: float | None = None


class ClockJudge:
    """Judges the system clock once per housekeeping tick; keeps only the last tick's
    readings and a jump not yet confirmed."""

    def __init__(
        self,
        newest_arrival: Callable[[], float | None],
        rules: Callable[[], ClockSettings] = ClockSettings,
        sources: SyncSources | None = None,
    ) -> None:
        self._newest_arrival = newest_arrival  # epoch seconds, or None: nothing arrived
        self._rules = rules
        self._sources = sources if sources is not None else SyncSources()
        self._last: tuple[float, float] | None = None  # (wall, monotonic) at the last tick
        self._unconfirmed: tuple[float, float] | None = None  # (seconds, at) of a jump
        self._last_jump: tuple[str, float] | None = None  # (ISO time, seconds), to show

    def tick(self, wall: float | None = None, monotonic: float | None = None) -> ClockTick:
        """Judge the clock now (``wall``: epoch seconds, ``monotonic``: seconds; each
        read from the system only when not given)."""
        wall = time.time() if wall is None else wall
        monotonic = time.monotonic() if monotonic is None else monotonic
        rules = self._rules()
        synchronised = self._sources.synchronised()
        jump = self._jump(wall, monotonic, rules)
        if jump is not None:
            self._last_jump = (iso(wall), jump)
            self._unconfirmed = (jump, wall)
        if synchronised or not rules.require_sync:
            self._unconfirmed = None  # confirmed by a time source, or nothing to wait for
        why = self._implausible(wall, synchronised)
        trusted = why is None and (synchronised is True or not rules.require_sync)
        state = ClockState(
            synchronised=synchronised,
            plausible=why is None,
            trusted=trusted,
            why=why,
            last_jump=self._last_jump[0] if self._last_jump else None,
            last_jump_seconds=self._last_jump[1] if self._last_jump else None,
        )
        return ClockTick(state, jump)

    def _jump(self, wall: float, monotonic: float, rules: ClockSettings) -> float | None:
        """How far the wall clock stepped against the monotonic one since the last tick,
        if beyond the limit. (The monotonic clock stops while the system is suspended; a
        box beside a scanner is never suspended.)"""
        last, self._last = self._last, (wall, monotonic)
        if last is None:
            return None
        step = (wall - last[0]) - (monotonic - last[1])
        return step if abs(step) > rules.max_jump_seconds else None

    def _implausible(self, wall: float, synchronised: bool | None) -> str | None:
        """Why the clock cannot be right, in words that stay the same from tick to tick
        (a status that changed every second would be rewritten every second), or None."""
        if wall < RELEASE.timestamp():
            return f"it reads {iso(wall)[:10]}, before this software's release ({RELEASE.date()})"
        if self._unconfirmed is not None:
            seconds, at = self._unconfirmed
            return (f"it jumped {jump_words(seconds)} at {iso(at)}, "
                    "not yet confirmed by a time source")
        newest = None if synchronised else self._newest_arrival()
        if newest is not None and wall + ARRIVAL_TOLERANCE < newest:
            return f"it reads earlier than the newest arrival ({iso(newest)})"
        return None


class Arrivals:
    """The newest arrival time the clock must not fall behind: the index's at start,
    then each arrival the status model reports while the clock was trusted. An arrival
    stamped by an untrusted clock (a year ahead, say) must not hold the clock to it."""

    def __init__(self) -> None:
        self._newest: float | None = None

    def note(self, received_at: str | None, trusted: bool) -> None:
        """Take the last arrival's stamp (ISO 8601) if the clock that made it was trusted."""
        if received_at is None or not trusted:
            return
        try:
            stamp = dt.datetime.fromisoformat(received_at).timestamp()
        except ValueError:
            return
        if self._newest is None or stamp > self._newest:
            self._newest = stamp

    def newest(self) -> float | None:
        """Epoch seconds of the newest arrival (None: nothing has arrived)."""
        return self._newest


def iso(epoch: float) -> str:
    """Epoch seconds as ISO 8601, UTC, to the second."""
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).isoformat(timespec="seconds")


def jump_words(seconds: float) -> str:
    """A jump as a person reads it: '+365.0 days', '-2.0 h', '+90 s'."""
    sign = "+" if seconds >= 0 else "-"
    size = abs(seconds)
    if size >= 2 * 86400:
        return f"{sign}{size / 86400:.1f} days"
    if size >= 2 * 3600:
        return f"{sign}{size / 3600:.1f} h"
    return f"{sign}{size:.0f} s"
