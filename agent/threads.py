"""Stopping threads: a join that times out says which thread did not stop.

A daemon thread that overstays its stop does not keep the process alive, but it may
still hold a socket, a pin or a transaction; the log line is how an operator learns which.
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)


def join(thread: threading.Thread | None, timeout: float) -> bool:
    """Wait up to ``timeout`` s for ``thread`` to end; log an error naming it if it does not.

    True if it ended (or there was none, or it is the calling thread, which cannot wait
    for itself).
    """
    if thread is None or thread is threading.current_thread():
        return True
    thread.join(max(0.0, timeout))
    if thread.is_alive():
        log.error("thread %r did not stop within %.1f s; left running", thread.name, timeout)
        return False
    return True
