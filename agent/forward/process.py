"""The agent's side of forwarding: runs the senders in a process of their own
(``agent.forward.worker``) while there is somewhere to forward to. Which instances are
queued for whom is the archive's routing's business (``agent.forward.rules``); it wakes
this side, which passes the wake-up on.

Why a process: receiving and forwarding in one interpreter take turns at its lock, so
through the agent 500 instances reached the PACS in 2.1x the time they take straight
(the agent at one core's worth of CPU); with the senders on their own core the two
pipelines overlap. The queue is the archive's SQLite table either way: the process
boundary adds a pipe for wake-ups and events, nothing that could lose a job. Its messages
are typed, both ways, in ``agent.forward.messages``.

A forwarding process that dies or stops answering (it says "alive" every second) is
replaced on the next housekeeping tick; jobs it had not marked done are simply sent again.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path

import agent
from agent import threads
from agent.archive import Archive
from agent.archive.outbox import waiting
from agent.config import Config
from agent.forward import messages, retention, worker
from agent.forward.forwarder import STOP_WITHIN
from agent.forward.messages import (
    Alive,
    ClockTrust,
    DestinationState,
    Failed,
    Forwarded,
    LogRecord,
    Reconfigure,
    Stop,
    Stopped,
    Throttled,
    ToAgent,
    ToWorker,
    Unreadable,
    Wake,
    assert_never,
)
from agent.forward.windows import window_state
from agent.status import STUCK_AFTER, StatusModel

log = logging.getLogger(__name__)

RESPAWN_GAP = 5.0  # seconds between starts, so a process that cannot run does not spin
# from "stop" to killed: the senders' own deadline, and time to leave the interpreter
STOPS_WITHIN = STOP_WITHIN + 5.0


class ForwardingProcess:
    """Starts, feeds, watches and stops the forwarding process; the archive's routing
    (``agent.forward.rules.ConfiguredRouting``) calls ``wake``."""

    def __init__(self, current: Callable[[], Config], status: StatusModel) -> None:
        self.current = current  # the configuration in force
        self.archive: Archive | None = None  # the one it forwards from, once started
        self.status = status
        self.senders: tuple[str, ...] = ()  # as the forwarding process last reported them
        self._child: _Child | None = None
        self._spawned = -RESPAWN_GAP  # monotonic time of the last start
        self._down_since: float | None = None  # lost, and no process has answered since
        self._closing = False  # the agent stops: no process is started or replaced again

    def start(self, archive: Archive) -> None:
        """Forward what ``archive`` queues: start the forwarding process now if any
        destination is configured (else once jobs wait for a configured peer)."""
        self.archive = archive
        if self.current().forward.destinations:
            self._spawn()

    def running(self) -> bool:
        """A forwarding process runs."""
        return self._child is not None and self._child.alive()

    def pid(self) -> int | None:
        """The forwarding process's pid, while one runs."""
        return self._child.process.pid if self._child is not None else None

    def wake(self, destinations: Sequence[str]) -> None:
        """New jobs for these destinations (never blocks: called while receiving)."""
        child = self._child
        if child is not None:
            child.wake(destinations)

    def refresh_status(self) -> None:
        """Publish queue depth per destination; keep the forwarding process alive and fed."""
        if self.archive is None:
            return  # not started
        config = self.current()
        depth = self.archive.outbox.depth()
        self._keep_alive(depth, config)
        trusted = self.status.snapshot().clock.trusted
        self._tell_clock(trusted)
        names = tuple(sorted(set(self.senders) | set(config.forward.destinations)))
        if names:
            waiting: dict[str, tuple[int, float | None]] = {**self.archive.outbox.waiting()}
            self.status.queue_depth(depth, names, waiting)
            self._show_pace(config, names, trusted)
        if any(peer.commit for peer in config.peers.values()):
            self.status.destination_commitments(self.archive.pacs_commits.counts())

    def _keep_alive(self, depth: dict[str, dict[str, int]], config: Config) -> None:
        """Replace a process that died or stopped answering; start one when jobs appear."""
        child = self._child
        if self._closing:
            return  # one that ends now was told to
        if child is not None and child.stopped_at is not None:
            self._after_stopped(child)
        elif child is not None and not child.alive():
            self._lost(child, f"ended (exit code {child.process.returncode})")
        elif child is not None and child.silent_for() > STUCK_AFTER:
            self._lost(child, f"did not answer for {STUCK_AFTER:.0f} s and was killed")
        needed = config.forward.destinations or _waiting(depth, config)
        if self._child is None and needed and time.monotonic() - self._spawned > RESPAWN_GAP:
            self._spawn()

    def _tell_clock(self, trusted: bool) -> None:
        """Tell the forwarding process whether the clock is trusted, when it changed (and
        once to each new process): its send windows count only on a trusted clock."""
        child = self._child
        if child is not None and child.clock_trusted is not trusted:
            child.clock_trusted = trusted
            child.post(ClockTrust(trusted))

    def _show_pace(self, config: Config, names: tuple[str, ...], trusted: bool) -> None:
        """Each destination's send windows and cap, as the status shows them; decided by
        the function the senders use (``windows.window_state``), on the same clock."""
        now = time.time()
        for name in names:
            peer = config.peers.get(name)
            if peer is None:
                continue
            state = window_state(peer.send_windows, now, trusted)
            reason = state.reason
            if not state.open and peer.priority:
                rule = ", ".join(f"{key} = {pattern}" for key, pattern in peer.priority)
                reason = f"{reason}; priority instances ({rule}) go now"
            self.status.destination_pace(name, reason, state.open, peer.max_bytes_per_second)

    def _after_stopped(self, child: _Child) -> None:
        """A process that said "stopped" is silent on purpose (it is no hang): once it has
        exited, the next one starts when needed; one that overstays its exit is killed."""
        assert child.stopped_at is not None
        if not child.alive():
            log.info("the forwarding process stopped (exit code %s)", child.process.returncode)
            self.status.forwarding_process(None)
            self._child = None
        elif time.monotonic() - child.stopped_at > STOPS_WITHIN:
            self._lost(child, f"said it stopped but did not exit within {STOPS_WITHIN:.0f} s")

    def _lost(self, child: _Child, how: str) -> None:
        child.kill()  # and its pipe's threads end
        log.error("the forwarding process %s; starting another", how)
        self.status.error(f"the forwarding process {how}", part="forwarding")
        self.status.forwarding_process(None)
        self._child = None
        if self._down_since is None:
            self._down_since = time.monotonic()

    def trouble(self) -> str | None:
        """Why forwarding does not run although it should (for the watchdog), or None."""
        if self._down_since is not None and time.monotonic() - self._down_since > STUCK_AFTER:
            return "the forwarding process keeps failing"
        return None

    def reconfigured(self) -> None:
        """A reload put a new configuration in force: the forwarding process, which holds
        its own copy, is sent it (routing already reads it, through the same ``current``)."""
        config = self.current()
        if self._child is not None:
            self._child.post(Reconfigure(config))
        elif config.forward.destinations and not self._closing and self.archive is not None:
            self._spawn()

    def sweep(self) -> int:
        """Apply retention (only where forwarding happens)."""
        config = self.current()
        if self.archive is None or (not config.forward.destinations and not self.senders):
            return 0
        enabled = [name for name, peer in config.peers.items() if peer.commit]
        return retention.sweep(self.archive, config.forward, commit_enabled=enabled)

    def stop_soon(self) -> None:
        """Ask the forwarding process to stop now (its senders finish what is in flight)
        while the agent stops its other parts; ``close`` then waits for what is left."""
        self._closing = True
        if self._child is not None:
            self._child.ask_to_stop()

    def close(self) -> None:
        """Stop the forwarding process in order; kill it if it does not stop in time."""
        self._closing = True
        child, self._child = self._child, None
        if child is not None:
            child.stop(STOPS_WITHIN)
            self.status.forwarding_process(None)

    def _spawn(self) -> None:
        assert self.archive is not None
        self._spawned = time.monotonic()
        self._child = _Child(self, self.current(), self.archive.layout.root)

    def on_message(self, child: _Child, message: ToAgent | Unreadable) -> None:
        """What the forwarding process reports, applied to the one status model."""
        match message:
            case Forwarded(name, seconds):
                self.status.forwarded(name, seconds)
            case Failed(name, error):
                self.status.forward_failed(name, error)
            case DestinationState(name, down_since, error, next_probe):
                self.status.destination_state(name, down_since, error, next_probe)
            case Throttled(name, throttled):
                self.status.destination_throttled(name, throttled)
            case Alive(senders):  # its heartbeat: the status shows it running
                if child is self._child:  # not one replaced meanwhile
                    self.senders = senders
                    self._down_since = None
                    self.status.forwarding_process(child.process.pid)
            case LogRecord(fields):
                logging.getLogger().handle(logging.makeLogRecord(fields))
            case Stopped():
                child.stopped_at = time.monotonic()
                log.debug("the forwarding process (pid %s) stopped", child.process.pid)
            case Unreadable(why):
                log.warning("ignored %s from the forwarding process", why)
            case _:
                assert_never(message)


def _child_environment() -> dict[str, str]:
    """Our environment, with this ``agent`` package first on the path (it may not be
    installed, as when run from a checkout)."""
    env = dict(os.environ)
    here = str(Path(agent.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [here, env.get("PYTHONPATH")]))
    return env


def _waiting(depth: dict[str, dict[str, int]], config: Config) -> bool:
    """Jobs wait for a configured peer (``retrieve --send-to`` queues some)."""
    return any(name in config.peers and waiting(counts) for name, counts in depth.items())


class _Child:
    """One forwarding process and the two threads that carry its pipe.

    A fresh interpreter (``python -m agent.forward.worker FD``) rather than a fork: the
    agent's process runs threads, and a forked copy of their locks could hang; nor does
    it re-import whatever script started the agent, as multiprocessing's spawn would.
    """

    def __init__(self, owner: ForwardingProcess, config: Config, root: Path) -> None:
        self.owner = owner
        self._cond = threading.Condition()
        self._woken: set[str] = set()
        self._outgoing: deque[ToWorker] = deque()
        self._closed = False
        self._heard = time.monotonic()
        self._stop_asked: float | None = None  # monotonic time "stop" was posted
        self.stopped_at: float | None = None  # monotonic time it said "stopped"
        self.clock_trusted: bool | None = None  # as last told (None: not yet)
        ours, theirs = socket.socketpair()
        with theirs:
            self.process = subprocess.Popen(
                [sys.executable, "-m", worker.__name__, str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                env=_child_environment(),
            )
        self.conn = Connection(ours.detach())
        level = logging.getLogger().getEffectiveLevel()
        self.post(messages.Start(config, root, level))
        self._writer = threading.Thread(target=self._write, name="forward-link-out", daemon=True)
        self._reader = threading.Thread(target=self._read, name="forward-link-in", daemon=True)
        self._writer.start()
        self._reader.start()
        log.info("forwarding process started (pid %s)", self.process.pid)

    def alive(self) -> bool:
        """The process runs."""
        return self.process.poll() is None

    def silent_for(self) -> float:
        """Seconds since the process last said anything."""
        return time.monotonic() - self._heard

    def wake(self, destinations: Sequence[str]) -> None:
        """Coalesce wake-ups: one message carries every destination woken meanwhile."""
        with self._cond:
            self._woken.update(destinations)
            self._cond.notify()

    def post(self, message: ToWorker) -> None:
        """Queue a message for the process, in order."""
        with self._cond:
            self._outgoing.append(message)
            self._cond.notify()

    def ask_to_stop(self) -> None:
        """Post "stop" (once); the deadline of ``stop`` counts from now."""
        if self._stop_asked is None:
            self._stop_asked = time.monotonic()
            self.post(Stop())

    def stop(self, timeout: float) -> None:
        """Ask the process to stop unless asked already, wait until ``timeout`` s after it
        was asked, and kill it if it overstays."""
        self.ask_to_stop()
        assert self._stop_asked is not None
        left = max(0.0, self._stop_asked + timeout - time.monotonic())
        try:
            self.process.wait(left)
        except subprocess.TimeoutExpired:
            log.error("the forwarding process did not stop within %.0f s; killing it", timeout)
            self.kill()
        threads.join(self._reader, 2.0)
        self.conn.close()

    def kill(self) -> None:
        """End the process now (its undelivered jobs stay queued) and the pipe's threads."""
        self.process.kill()
        self.process.wait()
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _write(self) -> None:
        """Carry queued messages to the process; only this thread can block on the pipe."""
        while True:
            with self._cond:
                while not self._woken and not self._outgoing and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                woken, self._woken = self._woken, set()
                batch = list(self._outgoing)
                self._outgoing.clear()
            if woken:
                batch.insert(0, Wake(tuple(sorted(woken))))
            try:
                for message in batch:
                    self.conn.send_bytes(messages.encode(message))
            except (OSError, ValueError):
                return  # the process is gone: the next tick replaces it
            if any(isinstance(message, Stop) for message in batch):
                return

    def _read(self) -> None:
        """Apply what the process reports until its end of the pipe closes."""
        while True:
            try:
                frame = self.conn.recv_bytes()
            except (EOFError, OSError, ValueError):
                return
            self._heard = time.monotonic()
            try:
                self.owner.on_message(self, messages.decode_to_agent(frame))
            except Exception:  # a bad message must not end the link
                log.exception("could not apply a message from the forwarding process")
