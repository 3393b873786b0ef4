"""The disk's outlook: how long until free space reaches the floor at the recent ingest
rate (the bytes stored over the last few minutes), for the status model's
``disk_full_in`` and the metric ``edge_agent_disk_floor_eta_seconds``.

The rate is of what arrives, not of what the disk does: retention frees space in
steps and other programs write too, so the free space's own slope jumps about; what
the modality sends is what the operator can act on. Measured on the monotonic clock.
"""

from __future__ import annotations

from collections import deque

WINDOW = 600.0  # seconds of ingest the rate is taken over
MIN_SPAN = 10.0  # seconds of samples before a rate is told at all


class IngestRate:
    """Samples of the bytes stored so far, over a sliding window; fed once a tick."""

    def __init__(self, window: float = WINDOW) -> None:
        self._window = window
        self._samples: deque[tuple[float, int]] = deque()

    def sample(self, now: float, stored_bytes: int) -> None:
        """The total bytes stored up to ``now`` (monotonic seconds)."""
        self._samples.append((now, stored_bytes))
        while self._samples and now - self._samples[0][0] > self._window:
            self._samples.popleft()

    def per_second(self) -> float:
        """Bytes stored per second over the window (0 until it spans MIN_SPAN)."""
        if len(self._samples) < 2:
            return 0.0
        (first, start), (last, end) = self._samples[0], self._samples[-1]
        if last - first < MIN_SPAN:
            return 0.0
        return max(0, end - start) / (last - first)

    def seconds_to(self, headroom: int) -> float | None:
        """Seconds until ``headroom`` bytes (free minus the floor) are filled at the
        current rate: 0 when already at or below the floor, None when nothing comes in."""
        if headroom <= 0:
            return 0.0
        rate = self.per_second()
        return headroom / rate if rate > 0 else None
