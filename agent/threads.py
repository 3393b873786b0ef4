"""Stopping threads: a join that times out says which thread did not stop.

A daemon thread that overstays its stop does not keep the process alive, but it may
still hold a socket, a pin or a transaction; the log line is how an operator learns which.

``Worker`` is the one scaffolding of the agent's long-lived threads (the senders, the
committers, the commitment reporter, the status LEDs, the serial console's reader), as
gpiozero's ``GPIOThread``: a named daemon thread, a stop event, a wake event, and a
bounded stop that names the thread that overstays it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import TypeVar

log = logging.getLogger(__name__)

_W = TypeVar("_W", bound="Worker")


def join(thread: threading.Thread | None, timeout: float) -> bool:
    """Wait up to ``timeout`` s for ``thread`` to end; log an error naming it if it does not.

    True if it ended (or there was none, or it is the calling thread, which cannot wait
    for itself).
    """
    if _ended(thread, timeout):
        return True
    assert thread is not None
    _overstayed(thread, timeout)
    return False


def _ended(thread: threading.Thread | None, timeout: float) -> bool:
    """True once ``thread`` has ended within ``timeout`` s (or cannot be waited for)."""
    if thread is None or thread is threading.current_thread():
        return True
    thread.join(max(0.0, timeout))
    return not thread.is_alive()


def _overstayed(thread: threading.Thread, timeout: float) -> None:
    log.error("thread %r did not stop within %.1f s; left running", thread.name, timeout)


class Worker:
    """A named daemon thread running ``run()`` until asked to stop.

    ``wake()`` cuts short the thread's current ``wait()``; ``stop()`` asks it to end and
    wakes it (and calls ``_interrupt()``, where a subclass cancels a blocking read);
    ``close()`` stops it and waits at most ``stops_within`` s, logging the thread's name
    if it overstays. A stop from inside the thread itself does not wait for itself.
    """

    def __init__(self, name: str, stops_within: float) -> None:
        self.thread_name = name
        self.stops_within = stops_within
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def stopping(self) -> bool:
        """True once a stop was asked for: the loop in ``run()`` ends when it sees it."""
        return self._stop.is_set()

    def start(self) -> None:
        """Start the thread."""
        self._thread = threading.Thread(target=self.run, name=self.thread_name, daemon=True)
        self._thread.start()

    def run(self) -> None:
        """The thread's work: loop while not ``stopping``, resting in ``wait()``."""
        raise NotImplementedError

    def wake(self) -> None:
        """There is work: end the thread's current ``wait()`` now."""
        self._wake.set()

    def wait(self, timeout: float) -> None:
        """In the thread: rest up to ``timeout`` s, or until woken or stopped."""
        self._wake.wait(max(0.0, timeout))
        self._wake.clear()

    def rest(self, timeout: float) -> bool:
        """In the thread: rest ``timeout`` s unless stopped first; True if stopped."""
        return self._stop.wait(timeout)

    def stop(self) -> None:
        """Ask the thread to stop, without waiting for it."""
        self._stop.set()
        self._wake.set()
        self._interrupt()

    def _interrupt(self) -> None:
        """After a stop is asked: end whatever the thread blocks in (nothing by default)."""

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the thread to end, naming it in the log if it does not."""
        return join(self._thread, timeout)

    def close(self, timeout: float | None = None) -> None:
        """Stop the thread and wait for it, at most ``timeout`` s (``stops_within``)."""
        self.stop()
        self.join(self.stops_within if timeout is None else timeout)

    def __enter__(self: _W) -> _W:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stop_all(workers: Iterable[Worker], timeout: float) -> bool:
    """Ask every worker to stop at once, then wait for them all within one deadline of
    ``timeout`` s, naming each thread that overstays it; True if all ended."""
    workers = list(workers)
    for worker in workers:
        worker.stop()
    deadline = time.monotonic() + timeout
    stopped = True
    for worker in workers:
        if not _ended(worker._thread, deadline - time.monotonic()):
            assert worker._thread is not None
            _overstayed(worker._thread, timeout)
            stopped = False
    return stopped
