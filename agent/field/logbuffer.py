"""The last few hundred log lines in memory, for the serial console's ``logs`` command.

Attached to the ``agent`` logger (not the root), so re-configuring the root handlers
(``setup_logging``) leaves it in place. Info and above only: patient names and IDs are
logged at debug level, and the console never shows them.
"""

from __future__ import annotations

import collections
import logging
import threading

CAPACITY = 500
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_lock = threading.Lock()


class LogBuffer(logging.Handler):
    """A logging handler that keeps the last ``capacity`` formatted lines."""

    def __init__(self, capacity: int = CAPACITY, level: int = logging.INFO) -> None:
        super().__init__(level)
        self._lines: collections.deque[str] = collections.deque(maxlen=capacity)
        self.setFormatter(logging.Formatter(_FORMAT, "%Y-%m-%d %H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        """Keep one record, formatted (exception text on the following lines)."""
        try:
            text = self.format(record)
        except Exception:  # never let logging fail the caller
            self.handleError(record)
            return
        with _lock:
            self._lines.extend(text.splitlines() or [""])

    def lines(self, count: int | None = None) -> list[str]:
        """The last ``count`` lines (all of them when None), oldest first."""
        with _lock:
            kept = list(self._lines)
        return kept if count is None else kept[max(0, len(kept) - count) :]


def install(logger_name: str = "agent") -> LogBuffer:
    """Attach the buffer to ``logger_name`` once and return it (idempotent)."""
    logger = logging.getLogger(logger_name)
    with _lock:
        for handler in logger.handlers:
            if isinstance(handler, LogBuffer):
                return handler
        buffer = LogBuffer()
        logger.addHandler(buffer)
        return buffer


def installed(logger_name: str = "agent") -> LogBuffer | None:
    """The buffer attached to ``logger_name``, if any."""
    for handler in logging.getLogger(logger_name).handlers:
        if isinstance(handler, LogBuffer):
            return handler
    return None
