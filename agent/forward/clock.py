"""The time the senders go by, and how they wait for it: injectable, so a test can walk a
back-off schedule of minutes in a moment, without sleeping.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    """Wall-clock time (epoch seconds, as the queue's ``next_attempt``) and waiting."""

    def now(self) -> float:
        """The time now, in epoch seconds."""

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

    def wait_until(self, event: threading.Event, when: float) -> bool:
        """``event.wait`` until then."""
        return event.wait(max(0.0, when - time.time()))


SYSTEM_CLOCK = SystemClock()
