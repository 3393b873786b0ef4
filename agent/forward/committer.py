"""The committer: asks a ``commit = true`` destination for storage commitment of what was
delivered to it, in its own thread beside that destination's senders.

A batch goes once ``commit_after_instances`` delivered instances wait, or
``commit_after_seconds`` after the last delivery (the study, or studies, then stand
still). What was sent per study (``forward.when = "complete"``) is asked once per study
instead, as soon as every job of the study to the destination is delivered. A request
without a report in ``commit_report_timeout`` is asked again in a new transaction. The
report may come on the request's association or on a new one to our listener; both
settle the same archive rows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from agent.archive import Archive
from agent.config import Config
from agent.errors import PeerError
from agent.forward.sender import ForwardEvents, PeerWorker
from agent.net import commit_scu as commitment

log = logging.getLogger(__name__)

LOOK_EVERY = 0.5  # seconds between looks at what waits
MAX_BATCH = 10000  # instances in one request, whatever commit_after_instances says
RETRY_AFTER_FAILURE = 10.0  # seconds before asking again after a failed request
STOPS_WITHIN = 10.0  # close(): seconds for the request in flight


class Committer(PeerWorker):
    """Requests storage commitment from one destination; a stop is honoured after the
    request in flight."""

    def __init__(
        self, name: str, current: Callable[[], Config], archive: Archive, events: ForwardEvents
    ) -> None:
        super().__init__(f"commit-{name}", STOPS_WITHIN, name, current)
        self.archive = archive
        self.events = events
        self._not_before = 0.0

    def start(self) -> None:
        """Take in what was delivered before commitment was asked of this peer, then
        start watching the deliveries."""
        adopted = self.archive.pacs_commits.adopt_delivered(self.peer.name)
        if adopted:
            log.info("%d instances delivered to %s earlier will be asked about too",
                     adopted, self.peer.name)
        super().start()

    def run(self) -> None:
        """Look at what waits every LOOK_EVERY s, or when woken by a delivery."""
        while not self.stopping:
            try:
                self.step(time.time())
            except Exception:  # the committer must outlive any one failure
                log.exception("storage commitment with %s failed; trying again", self.peer.name)
                self._not_before = time.monotonic() + RETRY_AFTER_FAILURE
            self.wait(LOOK_EVERY)

    def step(self, now: float) -> bool:
        """Re-arm overdue requests, then ask for one batch if one is due; True if asked."""
        commits = self.archive.pacs_commits
        overdue = commits.ask_again(self.peer.name, now - self.peer.commit_report_timeout)
        if overdue:
            log.warning(
                "%s sent no commitment report within %.0f s for %d instances; asking again",
                self.peer.name, self.peer.commit_report_timeout, overdue,
            )
        if time.monotonic() < self._not_before:
            return False
        study = commits.study_batch(self.peer.name, MAX_BATCH)
        if study:
            self.ask(now, study)
            return True
        if not self._due(now):
            return False
        self.ask(now)
        return True

    def _due(self, now: float) -> bool:
        pending = self.archive.pacs_commits.pending(self.peer.name)
        if not pending.count:
            return False
        if pending.count >= self.peer.commit_after_instances:
            return True
        last = pending.last_delivered_at or 0.0
        return now - last >= self.peer.commit_after_seconds

    def ask(self, now: float, refs: list[tuple[str, str]] | None = None) -> None:
        """One request for ``refs`` (a study's), else for up to ``commit_after_instances``
        waiting instances."""
        commits = self.archive.pacs_commits
        if refs is None:
            limit = min(self.peer.commit_after_instances, MAX_BATCH)
            refs = commits.batch(self.peer.name, limit)
        transaction = commitment.new_transaction_uid()
        commits.requested((uid for _, uid in refs), self.peer.name, transaction, now)
        try:
            same = commitment.request(self.current(), self.peer, transaction, refs, commits)
        except PeerError as exc:
            commits.withdraw(transaction)
            self._not_before = time.monotonic() + RETRY_AFTER_FAILURE
            log.warning("cannot ask %s for storage commitment: %s", self.peer.name, exc)
            self.events.forward_failed(self.peer.name, f"storage commitment: {exc}")
            return
        where = "on the same association" if same else "awaiting its report"
        log.info("asked %s to commit %d instances (%s)", self.peer.name, len(refs), where)
