"""The prefetch worker: one thread in the agent that runs the queued prefetch jobs, one
at a time, and never ahead of forwarding.

It is woken when a job is queued (an arrival, an MPPS N-CREATE: the archive's
``Prefetching``), and looks at the queue every ``POLL`` seconds besides, which is how it
finds jobs another process queued (``edge-agent prefetch``) and retries that fell due.

**Forwarding first.** Before a job's query and before each study it pulls, the worker
waits while any forward job is due now (pending or retrying, its time come) for a
destination in ``[forward]`` that is up. A destination that is down (its jobs wait behind the
forwarding process's probe, ``agent.forward.gate``) does not hold prefetch back: its
jobs stay due, but nothing could send them. Between those looks the worker holds one
association at most (its C-FIND, or the C-MOVE / C-GET of one study); forwarding,
in its own process, never waits for it. A job queued by the first instance of a study
also waits ``settle`` seconds first, so that the instances right behind it are indexed
(and their forwards queued) before it looks.

**Retries.** A transient failure (connection refused, no answer, an association
rejected, a C-FIND failure status) sets the job ``retrying``, 30 s later, doubling to an
hour; after ``MAX_ATTEMPTS`` it fails for good. Studies that landed stay landed and
are skipped by the next attempt. A job the agent's stop cut short is queued again.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable

from agent.archive import Archive
from agent.archive.prefetch_jobs import HAND, STUDY, Job, PrefetchQueue
from agent.config import Config
from agent.prefetch.job import Context, JobFailed, Transient, run_job
from agent.pull import Landing
from agent.qr.retrieve import Progress
from agent.status import StatusModel
from agent.status_prefetch import prefetch_counts
from agent.threads import Worker

log = logging.getLogger(__name__)

POLL = 5.0  # seconds between looks at the queue when nothing wakes the worker
YIELD_LOOK = 0.5  # seconds between looks at the forward queue while yielding to it
SETTLE = 2.0  # seconds a job triggered by a study's first instance waits for the rest
RETRY_FIRST, RETRY_MAX = 30.0, 3600.0
MAX_ATTEMPTS = 12  # about seven hours of retries
STOPS_WITHIN = 10.0
RECOUNT = 30.0  # seconds between the housekeeping tick's recounts of the jobs per state
KEEP_DONE_DAYS = 30.0  # finished jobs are forgotten after this (they only dedupe triggers)
FORGET_EVERY = 3600.0  # seconds between looks for finished jobs to forget (a write)


class Stopped(Exception):
    """The agent stops: the job in hand is queued again."""


class PrefetchWorker(Worker):
    """Runs prefetch jobs from the archive's queue, yielding to forwarding."""

    def __init__(
        self,
        current: Callable[[], Config],
        archive: Archive,
        land: Landing,
        status: StatusModel,
        *,
        clock: Callable[[], float] = time.time,
        today: Callable[[], dt.date] = dt.date.today,
    ) -> None:
        super().__init__("prefetch", STOPS_WITHIN)
        self.current = current
        self.archive = archive
        self.land = land
        self.status = status
        self.queue = PrefetchQueue(archive.index)
        self.clock = clock
        self.today = today
        self.settle = SETTLE
        self.yielded = 0  # looks that found forwarding busy (since start)
        self._counted_at: float | None = None  # monotonic time of the last recount
        self._forgot_at: float | None = None  # ... and of the last forget_done

    def start(self) -> None:
        """Queue again what a stop or crash left running, then start the thread."""
        again = self.queue.requeue_running()
        if again:
            log.info("prefetch: %d jobs cut short by the last stop are queued again", again)
        super().start()

    def run(self) -> None:
        """Claim the job due first and run it; rest until woken or the next is due."""
        while not self.stopping:
            try:
                job = self.queue.claim(self.clock())
                if job is None:
                    self.wait(self._idle_for())
                    continue
                self.refresh_status(now=True)
                self._run(job)
            except Exception:  # the worker outlives any one failure
                log.exception("prefetch: the worker failed; looking again in %.0f s", POLL)
                self.rest(POLL)

    def refresh_status(self, *, now: bool = False) -> None:
        """Tell the status model the jobs per state: at once when the worker changed a
        job (``now``), else, from the housekeeping tick, every ``RECOUNT`` seconds, which
        is how jobs queued by arrivals or by hand are counted. A recount also forgets jobs
        done more than ``KEEP_DONE_DAYS`` ago, so the table and its count stay small on
        a box that runs for years (hourly: it is a write)."""
        mono = time.monotonic()
        if not now and self._counted_at is not None and mono - self._counted_at < RECOUNT:
            return
        self._counted_at = mono
        if self._forgot_at is None or mono - self._forgot_at >= FORGET_EVERY:
            self._forgot_at = mono
            self.queue.forget_done(self.clock() - KEEP_DONE_DAYS * 86400)
        self.status.prefetch(prefetch_counts(self.queue.counts()))

    def _idle_for(self) -> float:
        due = self.queue.next_due()
        return POLL if due is None else max(0.0, min(POLL, due - self.clock()))

    def _run(self, job: Job) -> None:
        """Run one claimed job and record how it ended."""
        why = "by hand" if job.trigger == HAND else f"{job.trigger} from {job.source}"
        log.info("prefetch #%d (%s) starts, attempt %d", job.pk, why, job.attempts)
        try:
            if job.trigger == STUDY and job.attempts == 1:
                self._rest_or_stop(self.settle)
            note = run_job(self.current(), job, self._context())
        except Stopped:
            self.queue.retry(job.pk, "the agent stopped during the job", self.clock())
            return
        except JobFailed as exc:
            self._fail(job, str(exc))
            return
        except Transient as exc:
            self._transient(job, str(exc))
            return
        self._finish(job, note)

    def _finish(self, job: Job, note: str | None) -> None:
        done = self.queue.get(job.pk)
        if note is None:
            self.queue.finish(job.pk, self.clock())
        else:
            self.queue.fail(job.pk, note, self.clock())
        if done is not None:
            log.info("prefetch #%d %s: %d studies, %.1f MB", job.pk,
                     "done" if note is None else "incomplete", done.studies,
                     done.bytes / 1048576)
        self.refresh_status()

    def _fail(self, job: Job, error: str) -> None:
        log.warning("prefetch #%d failed: %s", job.pk, error)
        self.queue.fail(job.pk, error, self.clock())
        self.refresh_status(now=True)

    def _transient(self, job: Job, error: str) -> None:
        if job.attempts >= MAX_ATTEMPTS:
            self._fail(job, f"gave up after {job.attempts} attempts: {error}")
            return
        delay = min(RETRY_MAX, RETRY_FIRST * 2 ** (job.attempts - 1))
        log.warning("prefetch #%d: %s; trying again in %.0f s", job.pk, error, delay)
        self.queue.retry(job.pk, error, self.clock() + delay)
        self.refresh_status(now=True)

    def _context(self) -> Context:
        return Context(
            land=self.land,
            queue=self.queue,
            yield_first=self.yield_to_forwarding,
            today=self.today,
            clock_trusted=self.archive.clock_trusted,
            clock=self.clock,
            on_progress=self._check_stop,
        )

    def yield_to_forwarding(self) -> None:
        """Wait while forwarding has work due for a destination that is up; Stopped if
        the agent stops meanwhile."""
        while self._forwarding_busy():
            self.yielded += 1
            self._rest_or_stop(YIELD_LOOK)
        self._check_stop()

    def _forwarding_busy(self) -> bool:
        """Forward jobs are due now for a destination in force that is not down (jobs
        left for a peer no longer forwarded to have no sender: they never hold it)."""
        due = self.queue.forward_due(self.clock())
        if not due:
            return False
        destinations = self.current().forward.destinations
        down = {d.name for d in self.status.snapshot().destinations if d.state == "down"}
        return any(name in destinations and name not in down for name in due)

    def _rest_or_stop(self, seconds: float) -> None:
        if self.rest(seconds):
            raise Stopped()

    def _check_stop(self, progress: Progress | None = None) -> None:
        """Stopped once the agent stops (also from a pull's progress: it ends the pull)."""
        if self.stopping:
            raise Stopped()
