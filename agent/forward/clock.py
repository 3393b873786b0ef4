"""The time the senders go by, and how they wait for it: injectable, so a test can walk a
back-off schedule of minutes in a moment, without sleeping.

Two clocks: wall time, only for what is stored (the queue's ``next_attempt``, delivery
times) or shown; and the monotonic clock, for every interval kept in memory (a
destination's back-off and its next probe), which a jump of the system clock cannot
stretch or cut short. A wait for a wall time is turned into a span of the monotonic
clock at once (``Event.wait``); what the index schedules is re-based when the clock jumps
(``agent.archive.rebase``).
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    """Wall-clock time (epoch seconds, as the queue's ``next_attempt``), monotonic time
    (intervals), and waiting."""

    def now(self) -> float:
        """The time now, in epoch seconds."""

    def monotonic(self) -> float:
        """Seconds on a clock that only moves forward, at the rate of real time."""

    def wait_until(self, event: threading.Event, when: float) -> bool:
        """Wait until ``event`` is set or the time is ``when``; True if set.

        An absolute time, so that no advance of the clock between reading it and waiting
        is missed. A return before either is allowed (callers look again).
        """


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        """``time.time()``."""
        return time.time()

    def monotonic(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()

    def wait_until(self, event: threading.Event, when: float) -> bool:
        """``event.wait`` until then: the span left is measured on the monotonic clock."""
        return event.wait(max(0.0, when - time.time()))


SYSTEM_CLOCK = SystemClock()
