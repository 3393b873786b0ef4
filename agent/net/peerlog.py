"""Rate-limited logging of what peers do wrong: one line, then a count.

A peer that sends garbage, or a scanner that probes the port, would otherwise write
several lines (and pynetdicom's tracebacks) per connection; on an SD card that is wear,
and the line that matters scrolls away. Each thread serving a connection is tagged with
its peer's address; a record from such a thread passes once per ``window`` for the same
peer and the same kind of message, and the rest are counted and reported in one line.
Only warnings and errors are limited; tracebacks from pynetdicom are bad input, not our
bug, and are written in debug mode only (where nothing is limited).
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

log = logging.getLogger(__name__)

WINDOW_SECONDS = 60.0
MAX_KEYS = 512  # beyond this many (peer, kind) pairs, new ones share one bucket per kind
_VARIABLE = re.compile(r"0x[0-9A-Fa-f]+|\d+|'[^']*'")

_peers: weakref.WeakKeyDictionary[threading.Thread, str] = weakref.WeakKeyDictionary()
_peers_lock = threading.Lock()


def tag_thread(thread: threading.Thread, peer: str) -> None:
    """Record that ``thread`` serves a connection from ``peer`` (an address)."""
    with _peers_lock:
        _peers[thread] = peer


@contextlib.contextmanager
def speaking_of(peer: str) -> Iterator[None]:
    """Within this block, the calling thread's warnings are limited as ``peer``'s."""
    thread = threading.current_thread()
    with _peers_lock:
        before = _peers.get(thread)
        _peers[thread] = peer
    try:
        yield
    finally:
        with _peers_lock:
            if before is None:
                _peers.pop(thread, None)
            else:
                _peers[thread] = before


def current_peer() -> str | None:
    """The peer the calling thread serves, if any."""
    with _peers_lock:
        return _peers.get(threading.current_thread())


@dataclass
class _Bucket:
    started: float
    example: str
    suppressed: int = 0


class PeerLogLimiter(logging.Filter):
    """A logger filter: per peer and kind of message, one record per window, then a count."""

    def __init__(
        self, *, window: float = WINDOW_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.window = window
        self.clock = clock
        self.enabled = True
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        """Pass, amend or drop one record (called by the logger it is attached to)."""
        if not self.enabled or record.levelno < logging.WARNING:
            return True
        if record.name.startswith("pynetdicom") and record.exc_info:
            record.exc_info = None  # bad input from a peer is not a bug of ours
            record.exc_text = None
        peer = current_peer()
        if peer is None:
            return True
        return self._admit(peer, record)

    def _admit(self, peer: str, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        kind = f"{record.name}:{_VARIABLE.sub('#', message)}"
        now = self.clock()
        with self._lock:
            key = (peer, kind) if len(self._buckets) < MAX_KEYS else ("many peers", kind)
            bucket = self._buckets.get(key)
            if bucket is not None and now - bucket.started < self.window:
                bucket.suppressed += 1
                return False
            self._buckets[key] = _Bucket(now, message)
        if bucket is not None and bucket.suppressed:
            record.msg = f"{message} (and {bucket.suppressed} more like it from {key[0]})"
            record.args = None
        return True

    def flush(self, *, everything: bool = False) -> None:
        """Report and forget buckets whose window is over (all of them if ``everything``)."""
        now = self.clock()
        with self._lock:
            done = [
                (key, bucket)
                for key, bucket in self._buckets.items()
                if everything or now - bucket.started >= self.window
            ]
            for key, _bucket in done:
                del self._buckets[key]
        for (peer, _kind), bucket in done:
            if bucket.suppressed:
                log.warning(
                    "%d more log lines like %r from %s in the last %.0f s were not written",
                    bucket.suppressed,
                    bucket.example,
                    peer,
                    now - bucket.started,
                )


LIMITER = PeerLogLimiter()


def install(logger_names: Iterable[str], *, debug: bool) -> PeerLogLimiter:
    """Attach the process's limiter to these loggers; in debug mode it lets everything by."""
    LIMITER.enabled = not debug
    for name in logger_names:
        target = logging.getLogger(name)
        if LIMITER not in target.filters:
            target.addFilter(LIMITER)
    return LIMITER


# What pynetdicom writes at ERROR when an association *we* request is not made. Every
# caller (forwarding, commitment, echo, find, retrieve, C-MOVE destinations) reports that
# failure in its own words, once per outage: pynetdicom's lines would repeat it per try.
_OUR_REQUEST_FAILED = (
    "Association request failed: unable to connect",
    "TCP Initialisation Error",
    "Association Rejected",
    "Result: ",
    "Reason: ",
    "No accepted presentation contexts",
    "Association Aborted",
    "ACSE timeout reached while waiting for response to association request",
)


class ReportedByCaller(logging.Filter):
    """Demote pynetdicom's lines about an association we requested that was not made
    (refused, rejected, aborted, unanswered) to debug: the caller reports it in words."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Pass anything else; turn these into debug records (dropped above debug)."""
        if record.levelno < logging.WARNING:
            return True
        failed = record.getMessage().startswith(_OUR_REQUEST_FAILED) or (
            record.name == "pynetdicom.transport" and record.exc_info is not None)
        if not failed:
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


REPORTED_BY_CALLER = ReportedByCaller()


def quiet_failed_requests() -> None:
    """Attach ``ReportedByCaller`` to the pynetdicom loggers that write those lines."""
    for name in ("pynetdicom.transport", "pynetdicom.acse"):
        target = logging.getLogger(name)
        if REPORTED_BY_CALLER not in target.filters:
            target.addFilter(REPORTED_BY_CALLER)
