"""Who waits for which instances to be archived: a fall-through retrieve sends each
pulled instance on as soon as it is durable and indexed, not when the pull ends.

``Archive.ingest`` tells ``arrived`` after the commit, for every instance it now holds
(a new one, a duplicate of one held, or one whose different copy was kept aside), so a
waiter never misses an instance that another association brought in the meantime.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable


class Expected:
    """Instances one retrieve waits for; ``next`` hands each over once it is archived."""

    def __init__(self, arrivals: Arrivals, uids: Iterable[str]) -> None:
        self.uids = frozenset(uids)
        self._arrivals = arrivals
        self._came: queue.SimpleQueue[str] = queue.SimpleQueue()

    def next(self, timeout: float) -> str | None:
        """The next archived instance's SOP Instance UID, or None after ``timeout`` s."""
        try:
            return self._came.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None

    def put(self, uid: str) -> None:
        """``uid`` is archived."""
        self._came.put(uid)

    def close(self) -> None:
        """Stop waiting (idempotent)."""
        self._arrivals.forget(self)

    def __enter__(self) -> Expected:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Arrivals:
    """The archive's register of waiters, by SOP Instance UID."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[str, list[Expected]] = {}

    def expect(self, uids: Iterable[str]) -> Expected:
        """Start waiting for ``uids`` (before asking anyone to send them)."""
        expected = Expected(self, uids)
        with self._lock:
            for uid in expected.uids:
                self._waiting.setdefault(uid, []).append(expected)
        return expected

    def arrived(self, uid: str) -> None:
        """``uid`` is archived: tell whoever waits for it (cheap when nobody does)."""
        if not self._waiting:  # the usual case, read without the lock: a waiter registers
            return  # before its pull starts, so it cannot miss what the pull brings
        with self._lock:
            waiters = list(self._waiting.get(uid, ()))
        for expected in waiters:
            expected.put(uid)

    def forget(self, expected: Expected) -> None:
        """``expected`` waits no more."""
        with self._lock:
            for uid in expected.uids:
                others = [e for e in self._waiting.get(uid, ()) if e is not expected]
                if others:
                    self._waiting[uid] = others
                else:
                    self._waiting.pop(uid, None)
