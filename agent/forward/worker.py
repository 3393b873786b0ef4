"""The forwarding process: the senders, on a core (and a GIL) of their own.

Receiving and forwarding in one Python process take turns at one interpreter lock, so a
busy forwarder slows every modality down. Here the senders run in a child process; it
shares nothing with the agent's process but the archive on disk (SQLite serialises the
writers) and one pipe. The agent's process sends wake-ups, queue depths, configurations
and "stop"; this process sends back deliveries, failures, log records and "alive".

It ignores SIGTERM and SIGINT (systemd and a terminal signal the whole group): the
agent's process stops it in order, and it stops by itself when that process is gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from agent.archive import Archive
from agent.config import Config
from agent.forward.forwarder import Forwarder
from agent.net import configure_pynetdicom, peerlog

log = logging.getLogger(__name__)


class Link:
    """This end of the pipe: thread-safe sends, and the sender events it carries."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._lock = threading.Lock()

    def send(self, *message: Any) -> None:
        """Send one message; a closed pipe means the agent's process is gone: drop it."""
        with self._lock, contextlib.suppress(OSError, ValueError):
            self.conn.send(message)

    def forwarded(self, name: str) -> None:
        """An instance reached ``name``."""
        self.send("forwarded", name)

    def forward_failed(self, name: str, error: str) -> None:
        """An attempt to deliver to ``name`` failed."""
        self.send("failed", name, error)

    def destination_state(
        self, name: str, down_since: float | None, error: str | None, next_probe: float | None
    ) -> None:
        """``name`` is up (all None), or down since then, for this reason, probed next then."""
        self.send("destination", name, down_since, error, next_probe)


class LinkLogHandler(logging.Handler):
    """Log records go to the agent's process, which writes them where its own go."""

    def __init__(self, link: Link) -> None:
        super().__init__()
        self.link = link

    def emit(self, record: logging.LogRecord) -> None:
        """Send the record, its message and traceback already formatted."""
        fields = dict(record.__dict__)
        fields["msg"] = record.getMessage()
        fields["args"] = None
        if record.exc_info:
            fields["exc_text"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        fields["exc_info"] = None
        self.link.send("log", fields)


def main(argv: list[str]) -> int:
    """``python -m agent.forward.worker FD``: the pipe is FD; its first message says what
    to run (the configuration, the archive root, the log level)."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)
    conn = Connection(int(argv[1]))
    try:
        kind, config, root, level = conn.recv()
    except (EOFError, OSError, ValueError):
        return 1  # the agent's process went away before it said anything
    if kind != "start":
        return 2
    serve(conn, config, root, level)
    _leave_stuck_threads()
    return 0


def _leave_stuck_threads() -> None:
    """Exit now if threads that did not stop would hold the interpreter's exit (pynetdicom's
    DUL threads are no daemons: one in flight lives until its DIMSE timeout)."""
    main = threading.main_thread()
    left = [t.name for t in threading.enumerate() if t is not main and not t.daemon]
    if left:
        log.warning("exiting with %d threads that did not stop: %s", len(left), ", ".join(left))
        os._exit(0)  # everything was said: the pipe carries each message as it is sent


def serve(conn: Connection, config: Config, root: Path, level: int) -> None:
    """Run the senders until told to stop or the agent's process is gone."""
    link = Link(conn)
    _log_through(link, level)
    configure_pynetdicom(debug=level <= logging.DEBUG)
    with Archive(root) as archive:
        forwarder = Forwarder(config, archive, link)
        forwarder.start()
        try:
            _obey(conn, forwarder, link)
        finally:
            forwarder.close()
    link.send("stopped")


def _log_through(link: Link, level: int) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(LinkLogHandler(link))
    root.setLevel(level)


def _obey(conn: Connection, forwarder: Forwarder, link: Link) -> None:
    """Act on the agent's messages until "stop" or the end of the pipe."""
    while True:
        try:
            kind, *body = conn.recv()
        except (EOFError, OSError):
            log.warning("the agent's process is gone; the forwarder stops")
            return
        if kind == "wake":
            forwarder.wake(body[0])
        elif kind == "tick":
            forwarder.adopt(body[0])
            peerlog.LIMITER.flush()
            link.send("alive", forwarder.names())
        elif kind == "config":
            config: Config = body[0]
            level = config.agent.log_level.upper()
            logging.getLogger().setLevel(level)
            configure_pynetdicom(debug=level == "DEBUG")
            forwarder.reconfigure(config)
        elif kind == "stop":
            return


if __name__ == "__main__":
    sys.exit(main(sys.argv))
