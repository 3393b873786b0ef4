"""A destination's pace in the forwarding process, shared by its lanes like its gate: the
token bucket of its bandwidth cap (``agent.forward.bandwidth``) and its send windows
(``agent.forward.windows``), both read from the configuration in force.

Where the cap bites: ``throttle(assoc, stop)`` hands the bucket to the DICOM engine
(``agent.net.engine.throttle``), which takes tokens for every P-DATA the sending thread
queues or writes on that association, before it is written; the association's own loop
never waits. Only forwarding associations are throttled, never those the agent accepts.

A DICOMweb sender throttles its request body with ``take(nbytes, stop)`` on the same
bucket, so a destination's cap holds whatever carries its bytes.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

from agent.config import Config, Peer
from agent.forward.bandwidth import REAL_CLOCK, BucketClock, TokenBucket
from agent.forward.clock import Clock
from agent.forward.windows import WindowState, window_state
from agent.net import engine


class Pacer:
    """One destination's cap and windows."""

    def __init__(
        self,
        name: str,
        current: Callable[[], Config],
        clock: Clock,
        trusted: Callable[[], bool],
        bucket_clock: BucketClock = REAL_CLOCK,
    ) -> None:
        self.name = name
        self.current = current
        self.clock = clock  # wall time, for the windows
        self.trusted = trusted  # the clock judge's word, as the agent's process last said it
        self.bucket = TokenBucket(self._cap, bucket_clock)
        self._held_back = 0.0  # the bucket's wait at the last ``throttling`` look

    def _peer(self) -> Peer | None:
        return self.current().peers.get(self.name)

    def _cap(self) -> int | None:
        peer = self._peer()
        return None if peer is None else peer.max_bytes_per_second

    def window(self) -> WindowState:
        """Whether the destination's queue may be sent now, and if not, until when."""
        peer = self._peer()
        windows = () if peer is None else peer.send_windows
        return window_state(windows, self.clock.now(), self.trusted())

    def priority(self) -> tuple[tuple[str, str], ...]:
        """The rule (keyword, pattern) whose jobs go outside the windows (empty: none)."""
        peer = self._peer()
        return () if peer is None else peer.priority

    def take(self, nbytes: int, stop: threading.Event | None = None) -> bool:
        """Block until ``nbytes`` may be written to the destination under its cap (at
        once with none); False if ``stop`` was set first: then write nothing more."""
        return self.bucket.take(nbytes, stop)

    def throttling(self) -> bool:
        """True if the cap held a writer back since the last look (or holds one now)."""
        waited, waiting = self.bucket.held_back()
        since, self._held_back = self._held_back, waited
        return waiting > 0 or waited > since

    def throttle(self, assoc: Any, stop: threading.Event) -> None:
        """Cap the bytes the association carries; a stop interrupts a waiting send
        (``bandwidth.Interrupted`` out of its ``send_c_store``)."""
        engine.throttle(assoc, functools.partial(self.bucket.take_or_raise, stop=stop))
