"""The quiet rule and the MPPS give-up time, judged once a housekeeping tick.

A study no MPPS step waits for is complete (``quiet``) once ``quiet_seconds`` (its
sender's ``peers.X.quiet_seconds``, else ``[study]``'s; 0: never) passed since the judge
first saw its latest instance; an MPPS step still missing instances is given up on
(``gave-up``) ``study.give_up_hours`` after the judge first saw it.

The timers run on a monotonic clock (injected for tests) and live in memory: after a
restart every open study and waiting step is timed again from start-up, so none is lost
and none completes early (a study whose sender was cut off by the stop gets the whole
period again). A tick sees a new instance at most one tick late, which only lengthens
the quiet period by that much; completion by evidence does not wait for a tick
(``agent.archive.studies``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from agent.archive.studies import StudyBook
from agent.config import Config

log = logging.getLogger(__name__)

Clock = Callable[[], float]


class StudyJudge:
    """Times open studies and waiting MPPS steps; completes them when their time is up."""

    def __init__(
        self, book: StudyBook, current: Callable[[], Config], clock: Clock = time.monotonic
    ) -> None:
        self.book = book
        self.current = current  # the configuration in force: a reload changes the periods
        self.clock = clock
        self._lock = threading.Lock()  # the housekeeping tick and a test's may overlap
        self._seen: dict[str, tuple[int, str | None]] = {}  # study: (received, last arrival)
        self._since: dict[str, float] = {}  # study: when its quiet timer started
        self._steps: dict[str, float] = {}  # MPPS step: when its give-up timer started

    def tick(self) -> None:
        """Look at every open study and waiting step once; complete those whose time is up."""
        with self._lock:
            config, now = self.current(), self.clock()
            self._judge_studies(config, now)
            self._judge_steps(config, now)

    def _judge_studies(self, config: Config, now: float) -> None:
        studies = self.book.open_studies()
        for gone in self._seen.keys() - {study.study_uid for study in studies}:
            del self._seen[gone], self._since[gone]
        for study in studies:
            uid, state = study.study_uid, (study.received, study.last_arrival)
            if self._seen.get(uid) != state:  # new, or an instance came: time it from now
                self._seen[uid], self._since[uid] = state, now
                continue
            quiet = config.quiet_seconds(study.calling_ae)
            if study.covered or quiet <= 0 or now - self._since[uid] < quiet:
                continue
            if self.book.complete_quietly(uid, study.received):
                log.info("study complete: quiet for %.0f s after %d instances",
                         quiet, study.received)

    def _judge_steps(self, config: Config, now: float) -> None:
        waiting = self.book.waiting_steps()
        for gone in self._steps.keys() - set(waiting):
            del self._steps[gone]
        give_up = config.study.give_up_hours * 3600.0
        for step in waiting:
            since = self._steps.setdefault(step, now)
            if now - since >= give_up:
                self.book.give_up(step)
                log.warning("an MPPS step still misses instances after %g hours: its studies"
                            " are complete with those listed missing", config.study.give_up_hours)
