"""The sender for a DICOMweb destination (``kind = "dicomweb"``): drains its queue by
STOW-RS, in requests capped by instance count and bytes (``max_instances``,
``max_request_mb``), each streamed from the archived files (``agent.web.stow``).

Everything else is the C-STORE sender's: the queue, the lanes, the gate (a service that
cannot be reached is down, its jobs wait untouched behind one probe request), retry with
back-off, quarantine of permanent failures, the events. Each instance's outcome comes
from the answer (PS3.18 10.5.3): named in the Referenced SOP Sequence, delivered (with a
Warning Reason, delivered with a warning); in the Failed SOP Sequence, its Failure
Reason classified as a C-STORE status is (0xA7xx transient; 0xA9xx, 0xCxxx, 0x0122,
0x0124 permanent), except 0x0111, a duplicate: the archive already has it, delivered.
A request refused as a whole: 4xx permanent, but 408 and 429 transient like 5xx, after
at least its Retry-After.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from agent.archive.outbox import Job, OutboxReader
from agent.forward.bandwidth import Interrupted
from agent.forward.policy import Delivery, classify_status, gives_up, retry_delay
from agent.forward.sender import Sender
from agent.web.client import SendError, WebClient, http_words
from agent.web.settings import WebSettings
from agent.web.stow import InstanceAnswer, Part, StowAnswer

log = logging.getLogger(__name__)

DUPLICATE = 0x0111  # Failure Reason: the SOP instance is there already
TRANSIENT_HTTP = (408, 429)
MB = 1024 * 1024


@dataclass(frozen=True)
class Outcome:
    """One instance's outcome of a request."""

    delivery: Delivery
    detail: str


class WebSender(Sender):
    """Delivers the queue of one DICOMweb destination by STOW-RS."""

    _web: WebClient | None = None
    _copies: dict[int, Path]  # changed copies made for requests not yet answered, by job

    def client(self) -> WebClient:
        """A client for the settings in force (a new one when a reload changed them)."""
        settings = self.peer.web
        assert settings is not None, "a WebSender serves a dicomweb peer"
        if self._web is None or self._web.settings != settings:
            if self._web is not None:
                self._web.close()
            self._web = WebClient(settings)
        return self._web

    def run(self) -> None:
        """Drain the queue as the C-STORE sender does; close the connections at the end."""
        try:
            super().run()
        finally:
            if self._web is not None:
                self._web.close()

    def _deliver(self, queue: OutboxReader, jobs: list[Job]) -> None:
        """Post the due jobs in capped requests, each through the gate."""
        settings = self.client().settings
        self._copies = {}  # a new batch's first copy removes any left before
        for batch in requests_of(self._parts(jobs), settings):
            if self.stopping:
                return
            if not self._priority_only and self._closed():
                return  # a send window closed: the rest wait for the next one
            try:
                answer = self.gate.connect(
                    functools.partial(self._post, batch), lambda: queue.waiting(self.peer.name))
            except Interrupted:  # stopped while the cap held the body back: jobs untouched
                return
            if answer is None:  # the service is down: the jobs wait, untouched
                self._pause(self.gate.resume_at())
                return
            pause = self._settle(batch, *answer)
            self._forget(batch)
            if pause:
                self._pause(self.clock.now() + pause)
                return

    def _parts(self, jobs: list[Job]) -> Iterator[tuple[Job, Part]]:
        """Each job with its file and size, made as its request is built (a changed copy,
        an encoding: not those of every due job before the first request); one that
        cannot be read fails (transient). The copies are recorded in ``_copies``."""
        first = True
        for job in jobs:
            if self.stopping:
                return
            path = self.archive.layout.absolute(job.path)
            sent = self._outgoing(job, path, keep_others=not first)  # this batch's copies
            if sent is None:
                continue
            first = False
            if sent.path != path:
                self._copies[job.pk] = sent.path
            try:
                body = self.link.for_web(self.peer, job, sent.path, self._variant(sent, path))
                part = Part(sent.uid or job.sop_instance_uid, body, body.stat().st_size)
            except OSError as exc:
                self._record(job, Delivery.TRANSIENT, f"cannot read {job.path}: {exc.strerror}")
                continue
            yield job, part

    def _forget(self, batch: list[tuple[Job, Part]]) -> None:
        """Remove the changed copies of a request that was answered: only the one being
        built (and the next job's, made to see whether it fits) stay on disk."""
        for job, _part in batch:
            copy = self._copies.pop(job.pk, None)
            if copy is not None:
                copy.unlink(missing_ok=True)

    def _post(self, batch: list[tuple[Job, Part]]) -> tuple[StowAnswer | SendError, float]:
        """One request; PeerError (from the client) when the service cannot be reached."""
        started = time.monotonic()
        try:
            answer: StowAnswer | SendError = self.client().stow(
                [part for _, part in batch], self._take())
        except SendError as exc:
            answer = exc
        return answer, time.monotonic() - started

    def _take(self) -> Callable[[int], object] | None:
        """What paces a request's body: the destination's bandwidth cap, shared with its
        other lanes, that a stop interrupts; None without a pacer."""
        if self.pacer is None:
            return None
        return functools.partial(self.pacer.bucket.take_or_raise, stop=self._stop)

    def _settle(
        self, batch: list[tuple[Job, Part]], answer: StowAnswer | SendError, took: float
    ) -> float:
        """Record every instance's outcome; the seconds the lane should wait (Retry-After)."""
        each = took / max(1, len(batch))
        wait = 0.0
        if isinstance(answer, StowAnswer) and answer.retry_after is not None:
            wait = min(answer.retry_after, self.current().forward.retry_max)
        for job, part in batch:
            outcome = judge(answer, part.sop_instance_uid)  # a de-identified copy has a new UID
            self._record_after(job, outcome, each, wait)
        if isinstance(answer, StowAnswer) and answer.status >= 300:
            log.warning("STOW-RS to %s: %s (%d instances)", self.peer.name,
                        http_words(answer.status, answer.phrase), len(batch))
        return wait

    def _record_after(self, job: Job, outcome: Outcome, seconds: float, wait: float) -> None:
        """As ``_record``, but a transient failure waits at least ``wait`` seconds."""
        if wait <= 0 or outcome.delivery is not Delivery.TRANSIENT:
            delivered = outcome.delivery in (Delivery.DELIVERED, Delivery.DELIVERED_WITH_WARNING)
            self._record(job, outcome.delivery, outcome.detail, seconds if delivered else None)
            return
        tries = job.attempts + 1
        settings = self.current().forward
        delay = max(wait, retry_delay(tries, settings, self._rng))
        self.archive.outbox.mark_failed(job, outcome.detail, self.clock.now() + delay,
                                        gives_up(outcome.delivery, tries, settings))
        self.events.forward_failed(self.peer.name, f"{outcome.delivery.value}: {outcome.detail}")


def requests_of(
    parts: Iterable[tuple[Job, Part]], settings: WebSettings
) -> Iterator[list[tuple[Job, Part]]]:
    """The jobs in requests of at most ``max_instances`` and ``max_request_mb`` (a file
    larger than that goes alone); ``parts`` is read only as far as each request needs."""
    limit = settings.max_request_mb * MB
    batch: list[tuple[Job, Part]] = []
    size = 0
    for job, part in parts:
        if batch and (len(batch) >= settings.max_instances or size + part.size > limit):
            yield batch
            batch, size = [], 0
        batch.append((job, part))
        size += part.size
    if batch:
        yield batch


def judge(answer: StowAnswer | SendError, uid: str) -> Outcome:
    """One instance's outcome, from the answer's words about it or about the request."""
    if isinstance(answer, SendError):
        return Outcome(Delivery.TRANSIENT, f"STOW-RS: {answer}")
    said = http_words(answer.status, answer.phrase)
    mine = answer.instances.get(uid)
    if mine is not None:
        return _instance(mine, said)
    if 200 <= answer.status < 300:
        if not answer.instances:  # a success that names no instance at all
            return Outcome(Delivery.DELIVERED, f"STOW-RS: {said}")
        return Outcome(Delivery.TRANSIENT, f"STOW-RS: {said}, but the answer does not name it")
    if 400 <= answer.status < 500 and answer.status not in TRANSIENT_HTTP:
        return Outcome(Delivery.PERMANENT, f"STOW-RS: {said}")
    return Outcome(Delivery.TRANSIENT, f"STOW-RS: {said}")


def _instance(mine: InstanceAnswer, said: str) -> Outcome:
    if mine.stored:
        if mine.reason:
            return Outcome(Delivery.DELIVERED_WITH_WARNING,
                           f"STOW-RS: {said}, Warning Reason 0x{mine.reason:04X}")
        return Outcome(Delivery.DELIVERED, f"STOW-RS: {said}")
    if mine.reason is None:
        return Outcome(Delivery.TRANSIENT, f"STOW-RS: {said}, failed without a reason")
    detail = f"STOW-RS: {said}, Failure Reason 0x{mine.reason:04X}"
    if mine.reason == DUPLICATE:
        return Outcome(Delivery.DELIVERED, detail + " (it has the instance already)")
    return Outcome(classify_status(mine.reason), detail)
