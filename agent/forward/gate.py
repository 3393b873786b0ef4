"""Whether a destination can be reached, shared by all its lanes.

When an association cannot be set up (connection refused, no answer, association
rejected), it is the destination that is down, not the instance: the whole destination
backs off. Its lanes stop dialling; one probe association tries again on the back-off
schedule (``retry_first`` doubling up to ``retry_max``, ±20 % jitter); the jobs wait
untouched behind it (no failed attempt counted, no ``next_attempt`` pushed, never
quarantined for it). One log line says it went down, one that it came back, how long
it was down and how many instances waited. Before this, each of 100 queued jobs backed
off on its own: 156 connection attempts and as many warnings in 90 s.

The state lives in the forwarding process's memory only: after a restart the first
association tries again, which is what a restart is for. It reaches the status model
through ``destination_state`` events. Its times are on the monotonic clock, so that a
jump of the system clock neither probes at once nor puts the next probe a year away;
they become wall time only where they are shown (the events, the log's "down for").
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar

from agent.errors import PeerError
from agent.forward.clock import Clock
from agent.forward.policy import retry_delay
from agent.forward.settings import ForwardSettings
from agent.words import duration_words

log = logging.getLogger(__name__)

T = TypeVar("T")
PROBE_WAIT = 5.0  # lanes waiting while the probe is out look again this often (or when woken)


class DestinationEvents(Protocol):
    """Where a destination's state goes: the status model, or the link to it."""

    def destination_state(
        self, name: str, down_since: float | None, error: str | None, next_probe: float | None
    ) -> None:
        """``name`` is up (all None), or down since then, for this reason, probed next then."""


@dataclass(frozen=True)
class Outage:
    """A destination that cannot be reached, since when, why, and when it is tried next."""

    since: float  # wall time, as shown
    began: float  # the same moment on the monotonic clock: how long it is down
    error: str
    failures: int  # probes that failed, the first failure included: the back-off step
    next_probe: float  # monotonic


class Gate:
    """The lanes of one destination dial through it: freely while the destination is up,
    one probe at a time on the back-off schedule while it is down."""

    def __init__(
        self,
        name: str,
        settings: Callable[[], ForwardSettings],
        events: DestinationEvents,
        clock: Clock,
        wake: Callable[[], None],
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self.settings = settings  # the [forward] settings in force
        self._events = events
        self._clock = clock
        self._wake = wake  # wakes every lane of the destination
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._outage: Outage | None = None
        self._reached_once = False  # until a dial succeeds, lanes dial one at a time
        self._probing = False  # a lane is dialling as the probe

    @property
    def outage(self) -> Outage | None:
        """The current outage, or None while the destination is up."""
        with self._lock:
            return self._outage

    def announce(self) -> None:
        """Report the current state (a new forwarding process knows of no outage yet)."""
        self._report(self.outage)

    def connect(self, dial: Callable[[], T], waiting: Callable[[], int]) -> T | None:
        """``dial()`` if the destination may be dialled now, and what it returned; None if
        it may not (wait until ``resume_at()``) or the dial raised PeerError (it is down).

        ``waiting`` counts the instances queued for the destination, for the log lines.
        """
        probe = self._admit()
        if probe is None:
            return None
        try:
            opened = dial()
        except PeerError as exc:
            self._failed(probe, str(exc), waiting)
            return None
        except BaseException:
            self._release(probe)
            raise
        self._reached(probe, waiting)
        return opened

    def resume_at(self) -> float:
        """When a lane that may not dial asks again, in wall time (it is also woken when
        the state changes): the next probe, or a while after now if the probe is out."""
        now, monotonic = self._clock.now(), self._clock.monotonic()
        with self._lock:
            if self._probing:
                return now + PROBE_WAIT
            if self._outage is None:
                return now
            return now + max(0.0, self._outage.next_probe - monotonic)

    def retry_now(self) -> None:
        """Probe at once (the peer's configuration changed: the reason may be gone)."""
        with self._lock:
            if self._outage is None:
                return
            self._outage = replace(self._outage, next_probe=self._clock.monotonic())
            outage = self._outage
        self._report(outage)
        self._wake()

    def _admit(self) -> bool | None:
        """None: do not dial now; False: dial, the destination is up; True: dial as the probe.

        Until a first dial succeeds nothing is known: one lane dials, the others wait for
        it, so a forwarding process that starts with the PACS down dials it once.
        """
        with self._lock:
            if self._outage is None and self._reached_once:
                return False
            if self._probing:
                return None
            if self._outage is not None and self._clock.monotonic() < self._outage.next_probe:
                return None
            self._probing = True
            return True

    def _release(self, probe: bool) -> None:
        if probe:
            with self._lock:
                self._probing = False

    def _failed(self, probe: bool, error: str, waiting: Callable[[], int]) -> None:
        """A dial failed: the destination goes down, or the probe moves a step on."""
        now, monotonic = self._clock.now(), self._clock.monotonic()
        with self._lock:
            if probe:
                self._probing = False
            previous = self._outage
            if previous is not None and not probe:
                return  # dialled while it was up; another lane already took it down
            failures = 1 if previous is None else previous.failures + 1
            delay = retry_delay(failures, self.settings(), self._rng)
            since, began = (now, monotonic) if previous is None else (
                previous.since, previous.began)
            outage = self._outage = Outage(since, began, error, failures, monotonic + delay)
        if previous is None:
            log.warning(
                "%s cannot be reached, forwarding to it waits: %s; %s queued;"
                " next try in %s, then less often (up to every %s)",
                self.name,
                error,
                _instances(waiting),
                duration_words(delay),
                duration_words(self.settings().retry_max),
            )
        else:
            log.debug("%s still cannot be reached (try %d): %s", self.name, failures, error)
        self._report(outage)
        self._wake()

    def _reached(self, probe: bool, waiting: Callable[[], int]) -> None:
        """A dial succeeded: a destination that was down is back."""
        monotonic = self._clock.monotonic()
        with self._lock:
            if probe:
                self._probing = False
            outage, self._outage = self._outage, None
            first, self._reached_once = not self._reached_once, True
        if outage is None:
            if first:
                self._wake()  # the lanes that waited for the first dial
            return
        log.info(
            "%s is reachable again after %s down; %s waited and are being sent",
            self.name,
            duration_words(monotonic - outage.began),
            _instances(waiting),
        )
        self._report(None)
        self._wake()

    def _report(self, outage: Outage | None) -> None:
        """The state as the status model shows it: the next probe in wall time."""
        if outage is None:
            self._events.destination_state(self.name, None, None, None)
        else:
            wall = self._clock.now() + (outage.next_probe - self._clock.monotonic())
            self._events.destination_state(self.name, outage.since, outage.error, wall)


def _instances(waiting: Callable[[], int]) -> str:
    """``N instances``, counted now; a count that fails must not keep the state from
    changing (it is only for the log line)."""
    try:
        return f"{waiting()} instances"
    except Exception:  # the index busy or closing: the line goes without the number
        log.debug("could not count the waiting instances", exc_info=True)
        return "the instances"
