"""One sender per destination: drains that destination's queue over reused associations,
in its own thread, so a dead or slow destination never holds the others back.

The lanes of a destination dial through its gate (``agent.forward.gate``): while the
destination cannot be reached they wait for its one probe, and their jobs stay untouched.

A destination's pace (``agent.forward.pacing``, shared by its lanes) decides what they
take: outside its send windows only the jobs its priority rule matches, and every
association's bytes through its bandwidth cap's bucket.

Files go as stored: a context with exactly the stored transfer syntax lets pynetdicom
stream the file without decoding it; an uncompressed file the peer only takes in another
uncompressed syntax is converted; any other is converted (agent/dicom/transcode.py) to a
syntax it took; what cannot be fails for that instance alone.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from agent import threads
from agent.archive import Archive
from agent.archive.outbox import Job, Lane, OutboxReader
from agent.config import Config, Peer
from agent.dicom.codecs import ConversionError
from agent.dicom.compression import AS_STORED, contexts, per_pair
from agent.dicom.contexts import MAX_CONTEXTS, sending_contexts
from agent.forward.bandwidth import Interrupted
from agent.forward.clock import SYSTEM_CLOCK, Clock
from agent.forward.gate import DestinationEvents, Gate
from agent.forward.link import link_for
from agent.forward.pacing import Pacer
from agent.forward.policy import Delivery, classify_status, gives_up, retry_delay
from agent.net.scu import Requestor, Target
from agent.outgoing.writer import HeldBack, OutgoingError, Prepared, digest_of, prepare

log = logging.getLogger(__name__)

BATCH = 200
LINGER = 2.0  # seconds an idle association waits for more instances before release
IDLE_WAIT = 5.0  # also how soon 'edge-agent queue retry' takes effect
STOPS_WITHIN = 10.0  # close(): seconds for the instance in flight


class ForwardEvents(DestinationEvents, Protocol):
    """Where a sender reports each delivery: the status model, or the link to it."""

    def forwarded(self, name: str, seconds: float | None = None) -> None:
        """An instance reached ``name``; its C-STORE took ``seconds``."""

    def forward_failed(self, name: str, error: str) -> None:
        """An attempt to deliver to ``name`` failed."""


class PeerWorker(threads.Worker):
    """A thread that works for one configured peer, read from the configuration in force
    (``current``) whenever it acts, so a reload reaches it at once."""

    def __init__(
        self, thread: str, stops_within: float, name: str, current: Callable[[], Config]
    ) -> None:
        super().__init__(thread, stops_within)
        self.current = current
        self._peer = current().peers[name]

    @property
    def peer(self) -> Peer:
        """The peer as configured now; as it was last, once a reload removed it (this
        thread is then being stopped)."""
        self._peer = self.current().peers.get(self._peer.name, self._peer)
        return self._peer


class Sender(PeerWorker):
    """Delivers the queue of one destination peer.

    A stop is honoured after the instance in flight; jobs not marked done are resent later.
    """

    def __init__(
        self,
        name: str,
        current: Callable[[], Config],
        archive: Archive,
        events: ForwardEvents,
        lane: Lane,
        gate: Gate,
        clock: Clock = SYSTEM_CLOCK,
        pacer: Pacer | None = None,
    ) -> None:
        super().__init__(f"forward-{name}-{lane.number}", STOPS_WITHIN, name, current)
        self.pacer = pacer  # the destination's cap and send windows, shared by its lanes
        self._priority_only = False  # the jobs in hand were taken outside the windows
        self.archive = archive
        self.events = events
        self.lane = lane
        self.gate = gate  # shared by the destination's lanes
        self.clock = clock
        self._rng = random.Random()
        layout = archive.layout
        self.link = link_for(layout.root, name, layout.tmp_dir)  # compression for the link

    def run(self) -> None:
        """Drain due jobs until stopped."""
        with self.archive.outbox.reader() as queue:
            while not self.stopping:
                try:
                    jobs = self._due(queue)
                    if jobs:
                        self._deliver(queue, jobs)
                        continue
                    self._sleep(queue)
                except Exception:  # the sender must outlive any one failure
                    log.exception("forwarding to %s failed; trying again shortly", self.peer.name)
                    self.rest(5)

    def _due(self, queue: OutboxReader) -> list[Job]:
        """Due jobs the send windows let go now: all of them inside a window (or with
        none, or on an untrusted clock), else those the priority rule matches."""
        now = self.clock.now()
        self._priority_only = self._closed()
        if not self._priority_only:
            return queue.due(self.peer.name, now, BATCH, self.lane)
        assert self.pacer is not None
        return queue.due_matching(self.peer.name, now, BATCH, self.lane, self.pacer.priority())

    def _closed(self) -> bool:
        """True while the destination is outside its send windows."""
        return self.pacer is not None and not self.pacer.window().open

    def _sleep(self, queue: OutboxReader) -> None:
        idle = self.clock.now() + IDLE_WAIT
        window = self.pacer.window() if self.pacer is not None else None
        if window is not None and window.opens_at is not None:
            self._pause(min(idle, window.opens_at))  # jobs may be due: not before it opens
            return
        upcoming = queue.next_due(self.peer.name, self.lane)
        self._pause(idle if upcoming is None else min(idle, upcoming))

    def _pause(self, until: float) -> None:
        """Wait for the clock to reach ``until``, a wake-up or stop."""
        self.clock.wait_until(self._wake, until)
        self._wake.clear()

    def _deliver(self, queue: OutboxReader, jobs: list[Job]) -> None:
        """Send over one association for as long as due jobs keep fitting its contexts.

        While a modality is still sending, new jobs arrive one by one: the association
        lingers a moment for them instead of being set up again for each instance.
        """
        first = sorted({(j.sop_class_uid, j.transfer_syntax) for j in jobs})
        later = queue.due_pairs(self.peer.name, self.clock.now(), self.lane) - set(first)
        pairs = (first + sorted(later))[:MAX_CONTEXTS // per_pair(self.peer.transfer_syntax)]
        assoc = self.gate.connect(
            lambda: self._associate(pairs), lambda: queue.waiting(self.peer.name)
        )
        if assoc is None:  # the destination is down: the jobs wait, untouched
            self._pause(self.gate.resume_at())
            return
        fits = set(pairs)
        if self.pacer is not None:
            self.pacer.throttle(assoc, self._stop)
        try:
            while jobs and not self.stopping and assoc.is_established:
                for job in jobs:
                    if self.stopping or not assoc.is_established:
                        return
                    if not self._priority_only and self._closed():
                        return  # a window closed: the rest wait for the next one
                    self._send_one(assoc, job)
                jobs = self._more(queue, fits)
        finally:
            if assoc.is_established:
                assoc.release()

    def _associate(self, pairs: list[tuple[str, str]]) -> Any:
        """An association offering ``pairs``, or PeerError saying why there is none."""
        requestor = Requestor(self.current())
        ae = requestor.ae()
        peer = self.peer
        ae.requested_contexts = (
            sending_contexts(pairs) if peer.transfer_syntax == (AS_STORED,)
            else contexts(pairs, peer.transfer_syntax))
        return requestor.associate(ae, Target(peer.ae_title, peer.host, peer.port, peer.name))

    def _more(self, queue: OutboxReader, fits: set[tuple[str, str]]) -> list[Job]:
        """Due jobs this association can carry, waiting up to LINGER for new ones."""
        deadline = time.monotonic() + LINGER
        while True:
            jobs = self._due(queue)
            usable = [j for j in jobs if (j.sop_class_uid, j.transfer_syntax) in fits]
            if usable or jobs or time.monotonic() >= deadline or self.stopping:
                return usable
            self.wait(deadline - time.monotonic())

    def _send_one(self, assoc: Any, job: Job) -> None:
        path = self.archive.layout.absolute(job.path)
        started = time.monotonic()
        changed = self._outgoing(job, path)
        if changed is None:
            return
        variant = self._variant(changed, path)
        try:
            with self.link.prepared(assoc, self.peer, job, changed.path, variant) as sent:
                status = assoc.send_c_store(sent)
        except Interrupted:  # stopped while throttled: the job waits, no attempt counted
            assoc.abort()
            return
        except ConversionError as exc:  # taken in none of its stored syntaxes, not convertible
            self._record(job, Delivery.PERMANENT, f"cannot convert it: {exc}")
            return
        except ValueError as exc:  # no accepted context for this SOP class and syntax
            self._record(job, Delivery.PERMANENT, f"no acceptable presentation context: {exc}")
            return
        except (OSError, RuntimeError) as exc:
            self._record(job, Delivery.TRANSIENT, f"cannot send: {exc}")
            return
        if not status or "Status" not in status:
            self._record(job, Delivery.TRANSIENT, "no response (aborted or timed out)")
            return
        code = int(status.Status)
        took = time.monotonic() - started
        self._record(job, classify_status(code), f"C-STORE answered 0x{code:04X}", took)

    def _outgoing(self, job: Job, path: Path, *, keep_others: bool = False) -> Prepared | None:
        """The file ``job`` goes to this peer as: the archived ``path``, or the changed copy
        its coercion or de-identification make (agent/outgoing); None once the reason it
        cannot go was recorded (a held-back instance is quarantined at once)."""
        try:
            return prepare(self.peer.outgoing, path, self.archive.layout.root, self.thread_name,
                           keep_others=keep_others)
        except HeldBack as exc:  # no retry would send it
            self._record(job, Delivery.PERMANENT, str(exc), quarantine_now=True)
        except OutgoingError as exc:
            self._record(job, Delivery.PERMANENT, str(exc))
        except OSError as exc:
            self._record(job, Delivery.TRANSIENT, f"cannot prepare its copy: {exc}")
        return None

    def _variant(self, changed: Prepared, archived: Path) -> str:
        """What names an encoding of ``changed`` in the link's cache: nothing for the
        archived file, else a digest of the change (a reload that changes it encodes anew)."""
        return "" if changed.path == archived else f"{digest_of(self.peer.outgoing)}."

    def _record(
        self, job: Job, outcome: Delivery, detail: str, seconds: float | None = None,
        *, quarantine_now: bool = False,
    ) -> None:
        now = self.clock.now()
        if outcome in (Delivery.DELIVERED, Delivery.DELIVERED_WITH_WARNING):
            if self.peer.commit:  # first: a study is never seen delivered without it
                self.archive.pacs_commits.delivered(
                    job.sop_instance_uid, job.sop_class_uid, self.peer.name, now
                )
            self.archive.outbox.mark_done(job, now)
            self.link.delivered(job.sop_instance_uid)
        else:
            tries = job.attempts + 1
            settings = self.current().forward
            quarantine = quarantine_now or gives_up(outcome, tries, settings)
            delay = retry_delay(tries, settings, self._rng)
            self.archive.outbox.mark_failed(job, detail, now + delay, quarantine)
        if outcome is Delivery.DELIVERED_WITH_WARNING:
            log.warning("forwarded to %s with a warning: %s", self.peer.name, detail)
        if outcome in (Delivery.DELIVERED, Delivery.DELIVERED_WITH_WARNING):
            self.events.forwarded(self.peer.name, seconds)
        else:
            self.events.forward_failed(self.peer.name, f"{outcome.value}: {detail}")
