"""Passing MPPS on (``forward.mpps_to``): every N-CREATE and N-SET the agent took goes to
each of those peers, as the modality sent it, under the same SOP Instance UID.

The queue is durable (agent/archive/mpps.py writes a job in the transaction that records
the request); a step's messages go in the order taken, so an N-SET never overtakes its
N-CREATE, while other steps go on. Outcomes follow the instances' policy
(agent/forward/policy.py): a transient failure is retried with back-off, for ever; a
permanent one is tried ``forward.permanent_tries`` times, then quarantined with every
later message of its step. Runs in the agent's process, one thread for all destinations
(MPPS is a few messages per procedure).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

from pydicom.dataset import Dataset

from agent import threads
from agent.archive import Archive, mpps
from agent.config import Config, Peer
from agent.dicom.contexts import MPPS, UNCOMPRESSED
from agent.dicom.status import (
    DUPLICATE_SOP_INSTANCE,
    MAY_NO_LONGER_BE_UPDATED,
    PROCESSING_FAILURE,
)
from agent.errors import PeerError
from agent.forward.policy import Delivery, classify_status, gives_up, retry_delay
from agent.net import scu
from agent.status import StatusModel
from agent.status_mpps import mpps_queues

log = logging.getLogger(__name__)

IDLE = 5.0  # seconds between looks when nothing is due (a wake-up comes sooner)
TIMEOUT = 30.0  # connecting, associating and each answer
STOPS_WITHIN = 5.0


def classify(kind: str, code: int, error_id: int | None) -> Delivery:
    """An N-CREATE or N-SET response status, as the instances' policy sees outcomes.

    Beyond it: an N-CREATE answered 0x0111 (the peer has that step: our earlier attempt
    got there, its answer did not come back) is delivered; 0x0110 with Error ID 0xA710
    (the step is final there) and the other 0x01xx failures (attribute and instance
    errors) will fail again: permanent.
    """
    outcome = classify_status(code)
    if outcome in (Delivery.DELIVERED, Delivery.DELIVERED_WITH_WARNING):
        return outcome
    if kind == mpps.N_CREATE and code == DUPLICATE_SOP_INSTANCE:
        return Delivery.DELIVERED_WITH_WARNING
    if code == PROCESSING_FAILURE:
        final = error_id == MAY_NO_LONGER_BE_UPDATED
        return Delivery.PERMANENT if final else Delivery.TRANSIENT
    if code & 0xFF00 == 0x0100:
        return Delivery.PERMANENT
    return outcome


class MppsForwarder(threads.Worker):
    """Sends the queued MPPS messages to each destination; woken when one is queued."""

    def __init__(
        self,
        current: Callable[[], Config],
        archive: Archive,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__("mpps-forwarder", STOPS_WITHIN)
        self.current = current  # the configuration in force
        self.archive = archive
        self.clock = clock
        self._rng = random.Random()

    def run(self) -> None:
        """Pass on what is due, then rest until the next is due or a wake-up."""
        while not self.stopping:
            try:
                pause = self.run_once()
            except Exception:
                log.exception("passing MPPS on failed; trying again")
                pause = IDLE
            self.wait(pause)

    def run_once(self) -> float:
        """Pass on every due message; return the seconds until the next is due."""
        config = self.current()
        pause = IDLE
        for name in mpps.waiting_destinations(self.archive.index):
            if self.stopping:
                break
            peer = config.peers.get(name)
            if peer is None:  # removed by a reload: its messages wait for it
                log.warning("MPPS messages for peers.%s wait: no such peer now", name)
                continue
            self._deliver(config, peer)
            upcoming = mpps.next_due(self.archive.index, name)
            if upcoming is not None:
                pause = min(pause, max(0.0, upcoming - self.clock()))
        return pause

    def refresh_status(self, status: StatusModel) -> None:
        """Tell the status model what waits and what is quarantined, per destination
        (each housekeeping tick: a ``queue retry`` from another process shows too)."""
        depth = mpps.depth(self.archive.index)
        status.mpps_queue(mpps_queues(depth, self.current().forward.mpps_to))

    def _deliver(self, config: Config, peer: Peer) -> None:
        """Send the due messages to ``peer`` over one association, until none is due."""
        jobs = mpps.due(self.archive.index, peer.name, self.clock())
        if not jobs:
            return
        try:
            assoc = self._associate(config, peer)
        except PeerError as exc:
            for job in jobs:
                self._record(config, job, Delivery.TRANSIENT, str(exc))
            return
        try:
            while jobs and not self.stopping and assoc.is_established:
                for job in jobs:
                    if self.stopping or not assoc.is_established:
                        return
                    self._record(config, job, *self._send(assoc, job))
                jobs = mpps.due(self.archive.index, peer.name, self.clock())
        finally:
            if assoc.is_established:
                assoc.release()

    def _associate(self, config: Config, peer: Peer) -> Any:
        requestor = scu.Requestor(config, TIMEOUT)
        ae = requestor.ae()
        ae.add_requested_context(MPPS, list(UNCOMPRESSED))
        return requestor.associate(ae, scu.Target(peer.ae_title, peer.host, peer.port, peer.name))

    def _send(self, assoc: Any, job: mpps.Job) -> tuple[Delivery, str]:
        """Send one message; its outcome and a line saying what happened."""
        ds = Dataset.from_json(job.message)
        try:
            if job.kind == mpps.N_CREATE:
                status, _reply = assoc.send_n_create(ds, MPPS, job.step_uid)
            else:
                status, _reply = assoc.send_n_set(ds, MPPS, job.step_uid)
        except ValueError as exc:  # the peer did not accept the MPPS context
            return Delivery.PERMANENT, f"no acceptable presentation context: {exc}"
        except (OSError, RuntimeError) as exc:
            return Delivery.TRANSIENT, f"cannot send: {exc}"
        if not status or "Status" not in status:
            return Delivery.TRANSIENT, "no response (aborted or timed out)"
        code = int(status.Status)
        error_id = status.get("ErrorID")
        outcome = classify(job.kind, code, None if error_id is None else int(error_id))
        return outcome, f"{job.kind} answered 0x{code:04X}"

    def _record(self, config: Config, job: mpps.Job, outcome: Delivery, detail: str) -> None:
        now = self.clock()
        if outcome in (Delivery.DELIVERED, Delivery.DELIVERED_WITH_WARNING):
            mpps.mark_done(self.archive.index, job, now)
            if outcome is Delivery.DELIVERED_WITH_WARNING:
                log.warning(
                    "MPPS %s passed on to %s with a warning: %s", job.kind, job.destination, detail
                )
            return
        tries = job.attempts + 1
        quarantine = gives_up(outcome, tries, config.forward)
        delay = retry_delay(tries, config.forward, self._rng)
        held = mpps.mark_failed(self.archive.index, job, detail, now + delay, quarantine)
        if quarantine:
            log.error(
                "MPPS step %s quarantined for %s (%d messages): %s",
                job.step_uid,
                job.destination,
                held,
                detail,
            )
        else:  # said once per message; the retries follow at debug level
            (log.warning if tries == 1 else log.debug)(
                "MPPS %s for %s not passed on (%s); again in %.0f s",
                job.kind,
                job.destination,
                detail,
                delay,
            )
