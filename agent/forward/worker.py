"""The forwarding process: the senders, on a core (and a GIL) of their own.

Receiving and forwarding in one Python process take turns at one interpreter lock, so a
busy forwarder slows every modality down. Here the senders run in a child process; it
shares nothing with the agent's process but the archive on disk (SQLite serialises the
writers) and one pipe, whose messages are in ``agent.forward.messages``. The agent's
process sends the start, wake-ups, configurations and "stop"; this process sends back
deliveries, failures, destination states, log records, "stopped", and every HEARTBEAT
seconds "alive" (after reading the queue itself, to adopt peers that jobs wait for).

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
import time
import traceback
from multiprocessing.connection import Connection

from agent.archive import Archive
from agent.config import Config
from agent.forward import messages
from agent.forward.forwarder import Forwarder
from agent.forward.messages import (
    ClockTrust,
    Reconfigure,
    Start,
    Stop,
    ToAgent,
    Unreadable,
    Wake,
    assert_never,
)
from agent.net import configure_pynetdicom, peerlog

log = logging.getLogger(__name__)

HEARTBEAT = 1.0  # seconds between "alive"s; the agent replaces a process silent for 15 s


class Link:
    """This end of the pipe: thread-safe sends, and the sender events it carries."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._lock = threading.Lock()
        self.throttled: dict[str, bool] = {}  # per destination, as last said

    def send(self, message: ToAgent) -> None:
        """Send one message; a closed pipe means the agent's process is gone: drop it."""
        frame = messages.encode(message)
        with self._lock, contextlib.suppress(OSError, ValueError):
            self.conn.send_bytes(frame)

    def forwarded(self, name: str, seconds: float | None = None) -> None:
        """An instance reached ``name``; its C-STORE took ``seconds``."""
        self.send(messages.Forwarded(name, seconds))

    def forward_failed(self, name: str, error: str) -> None:
        """An attempt to deliver to ``name`` failed."""
        self.send(messages.Failed(name, error))

    def destination_state(
        self, name: str, down_since: float | None, error: str | None, next_probe: float | None
    ) -> None:
        """``name`` is up (all None), or down since then, for this reason, probed next then."""
        self.send(messages.DestinationState(name, down_since, error, next_probe))


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
        self.link.send(messages.LogRecord(fields))


def main(argv: list[str]) -> int:
    """``python -m agent.forward.worker FD``: the pipe is FD; its first message says what
    to run (the configuration, the archive root, the log level)."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)
    conn = Connection(int(argv[1]))
    try:
        start = messages.decode_to_worker(conn.recv_bytes())
    except (EOFError, OSError):
        return 1  # the agent's process went away before it said anything
    if not isinstance(start, Start):
        return 2
    serve(conn, start)
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


def serve(conn: Connection, start: Start) -> None:
    """Run the senders until told to stop or the agent's process is gone."""
    link = Link(conn)
    _log_through(link, start.log_level)
    configure_pynetdicom(debug=start.log_level <= logging.DEBUG)
    with Archive(start.root) as archive:
        forwarder = Forwarder(start.config, archive, link)
        forwarder.start()
        try:
            _obey(conn, forwarder, link)
        finally:
            forwarder.close()
    link.send(messages.Stopped())


def _log_through(link: Link, level: int) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(LinkLogHandler(link))
    root.setLevel(level)


def _obey(conn: Connection, forwarder: Forwarder, link: Link) -> None:
    """Act on the agent's messages until "stop" or the end of the pipe, and beat between
    them: the agent's process hears "alive" every HEARTBEAT seconds while this loop runs."""
    beat_due = time.monotonic()
    while True:
        if time.monotonic() >= beat_due:
            _beat(forwarder, link)
            beat_due = time.monotonic() + HEARTBEAT
        try:
            if not conn.poll(max(0.0, beat_due - time.monotonic())):
                continue
            message = messages.decode_to_worker(conn.recv_bytes())
        except (EOFError, OSError):
            log.warning("the agent's process is gone; the forwarder stops")
            return
        if not _apply(message, forwarder):
            return


def _beat(forwarder: Forwarder, link: Link) -> None:
    """Adopt the peers jobs wait for (by this process's own look at the queue), write what
    repeated failures held back, and say "alive" with the destinations served."""
    try:
        forwarder.adopt(forwarder.archive.outbox.depth())
    except Exception:  # the beat goes on: the senders say what is wrong with the index
        log.exception("could not look at the queue for peers that jobs wait for")
    peerlog.LIMITER.flush()
    for name, throttled in forwarder.throttling().items():
        if link.throttled.get(name) is not throttled:  # said first, then when it changes
            link.throttled[name] = throttled
            link.send(messages.Throttled(name, throttled))
    link.send(messages.Alive(forwarder.names()))


def _apply(message: messages.ToWorker | Unreadable, forwarder: Forwarder) -> bool:
    """Act on one message; False once told to stop."""
    match message:
        case Wake(destinations):
            forwarder.wake(destinations)
        case Reconfigure(config):
            _reconfigure(forwarder, config)
        case ClockTrust(trusted):
            forwarder.trust_clock(trusted)
        case Stop():
            return False
        case Start():
            log.warning("ignored a second start message from the agent's process")
        case Unreadable(why):
            log.warning("ignored %s from the agent's process", why)
        case _:
            assert_never(message)
    return True


def _reconfigure(forwarder: Forwarder, config: Config) -> None:
    level = config.agent.log_level.upper()
    logging.getLogger().setLevel(level)
    configure_pynetdicom(debug=level == "DEBUG")
    forwarder.reconfigure(config)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
