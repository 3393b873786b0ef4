"""Storage Commitment Push Model SCP (PS3.4 Annex J): take the modality's N-ACTION,
record it durably, answer at once; a reporter thread later sends the N-EVENT-REPORT on
a new association to the peer, as the association's requestor in the SCP role (J.3).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import build_role

from agent import threads
from agent.archive import Archive, commitments
from agent.config import Config, Peer
from agent.dicom.contexts import (
    ALL_COMMITTED,
    COMMITMENT_REQUEST,
    SOME_FAILED,
    STORAGE_COMMITMENT,
    STORAGE_COMMITMENT_INSTANCE,
    UNCOMPRESSED,
)
from agent.dicom.status import (
    DUPLICATE_TRANSACTION_UID,
    INVALID_ARGUMENT_VALUE,
    NO_SUCH_ACTION_TYPE,
    NO_SUCH_SOP_CLASS,
    NOT_AUTHORIZED,
    PROCESSING_FAILURE,
    SUCCESS,
)
from agent.errors import PeerError
from agent.net import scu
from agent.net.access import Caller
from agent.status import StatusModel

log = logging.getLogger(__name__)

POLL = 1.0  # seconds between looks at waiting transactions (a store may settle one)
RETRY_FIRST, RETRY_MAX = 5.0, 600.0  # report back-off when the peer is down or silent
REPORT_TIMEOUT = 30.0
STOPS_WITHIN = 5.0


def may_request_commitment(caller: Caller) -> bool:
    """Whether ``caller`` may ask us for storage commitment (its N-ACTION is taken)."""
    return caller.may("commit")


def offered_commitment(caller: Caller) -> bool:
    """Whether the Storage Commitment context is offered to ``caller`` at association time:
    to peers that may ask us, and to ``commit = true`` destinations, whose reports on
    what we asked of them come on associations they open to us."""
    commit_destination = caller.peer is not None and caller.peer.commit
    return may_request_commitment(caller) or commit_destination


def parse_request(ds: Dataset | None) -> tuple[str, list[tuple[str, str]]] | int:
    """The Transaction UID and (class, instance) pairs of an N-ACTION, or a failure status."""
    if ds is None or "TransactionUID" not in ds or "ReferencedSOPSequence" not in ds:
        return INVALID_ARGUMENT_VALUE
    uid = str(ds.TransactionUID or "")
    if not UID(uid).is_valid:
        return INVALID_ARGUMENT_VALUE
    items: list[tuple[str, str]] = []
    for item in ds.ReferencedSOPSequence:
        sop_class = str(item.get("ReferencedSOPClassUID", "") or "")
        sop_uid = str(item.get("ReferencedSOPInstanceUID", "") or "")
        if not sop_class or not sop_uid:
            return INVALID_ARGUMENT_VALUE
        items.append((sop_class, sop_uid))
    return (uid, items) if items else INVALID_ARGUMENT_VALUE


class CommitmentHandler:
    """EVT_N_ACTION: checks the right per request, validates, records, answers."""

    def __init__(
        self,
        archive: Archive,
        caller_now: Callable[[Any], Caller | None],
        wake: Callable[[], None] = lambda: None,
    ) -> None:
        self.archive = archive
        self.caller_now = caller_now
        self.wake = wake  # the reporter, told that a transaction waits

    def on_n_action(self, event: Any) -> tuple[int, None]:
        """Answer with a status only: Orthanc rejects an N-ACTION reply with a data set."""
        try:
            return self._handle(event), None
        except Exception:
            log.exception("a storage commitment request could not be recorded")
            return PROCESSING_FAILURE, None

    def _handle(self, event: Any) -> int:
        caller = self.caller_now(event.assoc)
        if caller is None or caller.peer is None or not may_request_commitment(caller):
            log.warning("refused a storage commitment request from %s: not allowed", caller)
            return NOT_AUTHORIZED
        request = event.request
        if str(request.RequestedSOPClassUID) != STORAGE_COMMITMENT:
            return NO_SUCH_SOP_CLASS
        if request.ActionTypeID != COMMITMENT_REQUEST:
            return NO_SUCH_ACTION_TYPE
        parsed = parse_request(event.action_information)
        if isinstance(parsed, int):
            log.warning("invalid storage commitment request from %s (0x%04X)", caller, parsed)
            return parsed
        uid, items = parsed
        outcome = commitments.record(
            self.archive.index, uid, caller.peer.name, items, time.time(),
            self.archive.routing.queued,
        )
        if outcome == commitments.CONFLICTING:
            log.warning("%s reused transaction UID %s for other instances; refused", caller, uid)
            return DUPLICATE_TRANSACTION_UID
        if outcome == commitments.REPEATED:
            log.info("%s repeated commitment transaction %s: already recorded", caller, uid)
            return SUCCESS  # a retry after a lost response: its report goes (or went) once
        log.info("commitment transaction of %d instances from %s recorded", len(items), caller)
        self.wake()
        return SUCCESS


def report_dataset(uid: str, decision: commitments.Decision) -> tuple[int, Dataset]:
    """The N-EVENT-REPORT's Event Type ID and Event Information."""
    ds = Dataset()
    ds.TransactionUID = uid
    if decision.committed:
        ds.ReferencedSOPSequence = [_ref(c, i) for c, i in decision.committed]
    if not decision.failed:
        return ALL_COMMITTED, ds
    failed = []
    for sop_class, sop_uid, reason in decision.failed:
        item = _ref(sop_class, sop_uid)
        item.FailureReason = reason
        failed.append(item)
    ds.FailedSOPSequence = failed
    return SOME_FAILED, ds


def _ref(sop_class: str, sop_uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_uid
    return item


class CommitmentReporter(threads.Worker):
    """Sends each settled transaction's report; retries with back-off, durably, forever.

    ``close()`` leaves a report being sent to its daemon thread (it is sent again later):
    a silent peer holds no stop.
    """

    def __init__(
        self,
        current: Callable[[], Config],
        archive: Archive,
        status: StatusModel,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__("commitment-reporter", STOPS_WITHIN)
        self.current = current  # the configuration in force
        self.archive = archive
        self.status = status
        self.clock = clock

    def start(self) -> None:
        """Report what waited across a restart now, then keep going in a thread."""
        waited = commitments.rearm(self.archive.index, self.clock())
        if waited:
            log.info("%d commitment transactions from before the start await their report", waited)
        super().start()

    def run(self) -> None:
        """Look at due transactions every POLL s, or when woken."""
        while not self.stopping:
            try:
                self.run_once()
            except Exception:
                log.exception("commitment reporting failed; trying again")
            self.wait(POLL)

    def run_once(self) -> None:
        """Decide every due transaction; report the settled ones."""
        for tx in commitments.due(self.archive.index, self.clock()):
            if self.stopping:
                break
            self._attend(tx)
        self.status.owed_reports(**_counts(self.archive))

    def _attend(self, tx: commitments.Transaction) -> None:
        config = self.current()
        peer = config.peers.get(tx.peer)
        now = self.clock()
        if peer is None:
            log.warning("commitment report for peers.%s held: no such peer now", tx.peer)
            commitments.reschedule(self.archive.index, tx.uid, now + RETRY_MAX)
            return
        decision = commitments.decide(
            self.archive.index, tx, peer.commit_when, peer.commit_give_up_hours, now
        )
        if not decision.settled:
            commitments.reschedule(self.archive.index, tx.uid, now + POLL)
            return
        try:
            send_report(config, peer, tx.uid, decision)
        except PeerError as exc:
            delay = retry_delay(tx.attempts)
            log.warning("commitment report to %s not delivered (%s); again in %.0f s",
                        peer.name, exc, delay)
            commitments.reschedule(self.archive.index, tx.uid, now + delay, str(exc))
            return
        commitments.mark_reported(self.archive.index, tx.uid, self.clock())
        log.info("commitment report sent to %s: %d committed, %d failed",
                 peer.name, len(decision.committed), len(decision.failed))


def retry_delay(attempts: int) -> float:
    """Seconds before the next report attempt after ``attempts`` failed ones."""
    return float(min(RETRY_MAX, RETRY_FIRST * 2 ** min(attempts, 10)))


def _counts(archive: Archive) -> dict[str, int]:
    found = commitments.counts(archive.index)
    return {"pending": found[commitments.PENDING], "reported": found[commitments.REPORTED]}


def send_report(config: Config, peer: Peer, uid: str, decision: commitments.Decision) -> None:
    """Open a new association to ``peer`` in the SCP role and send the N-EVENT-REPORT;
    PeerError unless the peer answers it with success."""
    requestor = scu.Requestor(config, REPORT_TIMEOUT)
    ae = requestor.ae()
    ae.add_requested_context(STORAGE_COMMITMENT, list(UNCOMPRESSED))
    role = build_role(STORAGE_COMMITMENT, scu_role=False, scp_role=True)
    target = scu.Target(peer.ae_title, peer.host, peer.port, peer.name)
    assoc = requestor.associate(ae, target, ext_neg=[role])
    try:
        event_type, info = report_dataset(uid, decision)
        answer = assoc.send_n_event_report(
            info, event_type, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE
        )
        status = answer[0] if isinstance(answer, tuple) else answer
        code = getattr(status, "Status", None)
        if code is None:
            raise PeerError(f"{peer.name}: no answer to the N-EVENT-REPORT")
        if code != SUCCESS:
            raise PeerError(f"{peer.name}: N-EVENT-REPORT answered 0x{int(code):04X}")
    finally:
        if assoc.is_established:
            assoc.release()
        else:
            assoc.abort()
