"""A destination's bandwidth cap: a token bucket over the bytes written to it, shared by
all its lanes (associations, or a DICOMweb sender's requests).

Tokens are bytes; they accrue at the cap (``max_bytes_per_second``, read from the
configuration in force at each take, so a reload changes it at once) up to a burst of
BURST_SECONDS' worth. ``take(n)`` returns once ``n`` tokens were collected, piece by
piece (a write bigger than the burst waits for all of it, it is never let through on
credit), or False as soon as the stop event is set. So over any span T the bytes let
through are at most ``burst + cap x T``: for a 20 s measurement the burst adds 2.5 %.
Half a second's burst rides over the gaps between instances (a C-STORE's response, the
next file opened) that a smaller one lost: at 4 MB/s over two lanes, 0.1 s of burst
delivered 0.90 of the cap, 0.5 s 1.00 (scripts/bench_bandwidth.py).

The bucket's clock is injected (monotonic time and an interruptible wait), so a test
walks minutes of throttling in a moment.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

BURST_SECONDS = 0.5  # the bucket holds this long's worth of bytes at most
MIN_BURST = 1500  # ...and at least one Ethernet frame's, so tiny caps still move
MIN_WAIT = 0.001  # seconds: a wait for a few bytes still lets the clock move


class BucketClock(Protocol):
    """Monotonic seconds, and a wait that a set event ends early."""

    def monotonic(self) -> float:
        """Seconds on a clock that only moves forward."""

    def sleep(self, stop: threading.Event, seconds: float) -> bool:
        """Wait ``seconds`` or until ``stop`` is set; True if it is set."""


class RealClock:
    """``time.monotonic`` and ``Event.wait``."""

    def monotonic(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()

    def sleep(self, stop: threading.Event, seconds: float) -> bool:
        """``stop.wait(seconds)``."""
        return stop.wait(max(0.0, seconds))


REAL_CLOCK = RealClock()
_NEVER = threading.Event()  # a stop event nobody sets


class Interrupted(Exception):
    """A throttled write gave up: the thread that waited is being stopped."""


class TokenBucket:
    """Bytes per second for one destination; thread-safe."""

    def __init__(self, rate: Callable[[], int | None], clock: BucketClock = REAL_CLOCK) -> None:
        self.rate = rate  # the cap in force (None: no cap)
        self.clock = clock
        self._lock = threading.Lock()
        self._tokens: float | None = None  # full at the first take
        self._stamp = 0.0
        self.taken = 0  # bytes let through, in all (for tests and benchmarks)
        self.waited = 0.0  # seconds takers spent waiting for tokens, in all
        self.takers = 0  # threads inside ``take`` now
        self.sleepers = 0  # of them, those waiting for tokens

    def take(self, nbytes: int, stop: threading.Event | None = None) -> bool:
        """Wait until ``nbytes`` may be written; False if ``stop`` was set first (the
        tokens collected so far are spent)."""
        with self._lock:
            self.takers += 1
        try:
            return self._take(nbytes, stop or _NEVER)
        finally:
            with self._lock:
                self.takers -= 1

    def _take(self, nbytes: int, stop: threading.Event) -> bool:
        need = float(nbytes)
        while True:
            wait = self._collect(need)
            if wait is None:
                with self._lock:
                    self.taken += nbytes
                return True
            need, seconds = wait
            started = self.clock.monotonic()
            with self._lock:
                self.sleepers += 1
            try:
                if self.clock.sleep(stop, seconds):
                    return False
            finally:
                with self._lock:
                    self.sleepers -= 1
                    self.waited += self.clock.monotonic() - started

    def take_or_raise(self, nbytes: int, stop: threading.Event | None = None) -> None:
        """``take``, raising Interrupted instead of returning False (for a write path
        that cannot say no, such as an association's socket)."""
        if not self.take(nbytes, stop):
            raise Interrupted(f"stopped while waiting to send {nbytes} bytes")

    def held_back(self) -> tuple[float, int]:
        """Seconds takers have waited in all (counted as each wait ends), and how many
        wait now: the cap holds writers back while either grows or the second is not 0."""
        with self._lock:
            return self.waited, self.sleepers

    def throttled(self) -> bool:
        """True if a cap is in force and the bucket is empty now (writers wait)."""
        with self._lock:
            rate = self.rate()
            if rate is None:
                return False
            self._refill(rate)
            return (self._tokens or 0.0) < 1.0

    def _collect(self, need: float) -> tuple[float, float] | None:
        """Take what is there of ``need``: None when all of it was, else what is still
        needed and how long to wait for (the rest, or a burst of it)."""
        with self._lock:
            rate = self.rate()
            if rate is None:
                return None
            burst = self._refill(rate)
            assert self._tokens is not None
            got = min(self._tokens, need)
            self._tokens -= got
            need -= got
            if need < 1.0:  # float rounding: what is left is no byte
                return None
            return need, max(MIN_WAIT, min(need, burst) / rate)

    def _refill(self, rate: int) -> float:
        """Add what accrued since the last look, up to the burst; the burst."""
        burst = max(rate * BURST_SECONDS, float(MIN_BURST))
        now = self.clock.monotonic()
        if self._tokens is None:
            self._tokens = burst
        else:
            self._tokens = min(burst, self._tokens + (now - self._stamp) * rate)
        self._stamp = now
        return burst
