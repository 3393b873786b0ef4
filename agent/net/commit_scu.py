"""Storage Commitment Push Model as SCU: the N-ACTION request and the N-EVENT-REPORT it
brings, on the request's own association or on a new one the peer opens to us.

Either way a report is settled in the archive table (``agent.archive.pacs_commits``), so
it does not matter which association or process took it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom import Dataset
from pydicom.uid import generate_uid
from pynetdicom import evt
from pynetdicom.status import GENERAL_STATUS

from agent.archive.pacs_commits import REQUESTED, PacsCommits, Settled
from agent.config import Config, Peer
from agent.dicom import status
from agent.dicom.contexts import (
    COMMITMENT_REQUEST,
    STORAGE_COMMITMENT,
    STORAGE_COMMITMENT_INSTANCE,
    UNCOMPRESSED,
)
from agent.errors import PeerError
from agent.net.scu import Requestor, Target

log = logging.getLogger(__name__)

SAME_ASSOCIATION_WAIT = 2.0  # seconds a still-open association is kept for the report


@dataclass(frozen=True)
class Report:
    """One N-EVENT-REPORT's content: the transaction, the instances it says are committed
    and those that failed (with reasons)."""

    transaction_uid: str
    committed: tuple[str, ...]
    failed: dict[str, int]


def parse_report(info: Dataset) -> Report:
    """The transaction and failed instances (with reasons) of an Event Information set;
    ValueError if it names no transaction."""
    transaction = str(info.get("TransactionUID", "") or "")
    if not transaction:
        raise ValueError("the report names no Transaction UID")
    failed = {
        str(item.ReferencedSOPInstanceUID): int(
            item.get("FailureReason", status.PROCESSING_FAILURE)
        )
        for item in info.get("FailedSOPSequence", [])
    }
    committed = tuple(
        str(item.ReferencedSOPInstanceUID) for item in info.get("ReferencedSOPSequence", [])
    )
    return Report(transaction, committed, failed)


def settle_event(
    commits: PacsCommits, event: Any, reporter: str
) -> tuple[int, Settled | None]:
    """Settle an EVT_N_EVENT_REPORT from the peer named ``reporter`` in the archive: the
    DIMSE status to answer with, and what it settled (None when it could not be read)."""
    try:
        report = parse_report(event.event_information)
    except Exception as exc:  # a malformed report must not take the association down
        log.warning("unreadable storage commitment report: %s", exc)
        return status.PROCESSING_FAILURE, None
    settled = commits.settle(
        report.transaction_uid, report.committed, report.failed, reporter, time.time()
    )
    if settled.destination is not None and settled.destination != reporter:
        log.warning(
            "refused a storage commitment report from peers.%s on a transaction asked of"
            " peers.%s", reporter, settled.destination,
        )
        return status.NOT_AUTHORIZED, None
    if settled.destination is None:
        # answered Success all the same: there is nothing the peer could send better
        log.warning(
            "ignored a storage commitment report from peers.%s: it names a transaction we"
            " are not waiting for (asked again since, or never asked by us)", reporter,
        )
        log.debug("unknown commitment transaction %s", report.transaction_uid)
        return status.SUCCESS, settled
    log.info(
        "storage commitment report from %s: %d committed, %d failed",
        settled.destination,
        settled.committed,
        settled.failed,
    )
    log.debug("commitment transaction %s settled", report.transaction_uid)
    return status.SUCCESS, settled


def request_dataset(transaction_uid: str, refs: Sequence[tuple[str, str]]) -> Dataset:
    """The N-ACTION Action Information: the transaction and the (class, instance) pairs."""
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    items = []
    for sop_class, sop_instance in refs:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        items.append(item)
    ds.ReferencedSOPSequence = items
    return ds


def new_transaction_uid() -> str:
    """A fresh Transaction UID (every request, and every retry, gets its own)."""
    return str(generate_uid())


def request(
    config: Config,
    peer: Peer,
    transaction_uid: str,
    refs: Sequence[tuple[str, str]],
    commits: PacsCommits,
    wait: float = SAME_ASSOCIATION_WAIT,
) -> bool:
    """Send the N-ACTION; keep the association up to ``wait`` s for a report on it, or
    until one on a new association has settled the transaction.

    True if the report came on this association; PeerError if the request failed. The
    rows must be marked requested before: a report on a new association can come first.
    """
    reported = threading.Event()

    def on_report(event: Any) -> tuple[int, None]:
        code, _ = settle_event(commits, event, peer.name)
        reported.set()
        return code, None

    requestor = Requestor(config)
    ae = requestor.ae()
    ae.add_requested_context(STORAGE_COMMITMENT, list(UNCOMPRESSED))
    target = Target(peer.ae_title, peer.host, peer.port, peer.name)
    handlers: list[tuple[Any, Callable[..., Any]]] = [(evt.EVT_N_EVENT_REPORT, on_report)]
    assoc = requestor.associate(ae, target, extra_handlers=handlers)
    try:
        if STORAGE_COMMITMENT not in {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}:
            raise PeerError(f"{target}: the peer does not offer Storage Commitment to us")
        asked = time.monotonic()
        answer, _ = assoc.send_n_action(
            request_dataset(transaction_uid, refs),
            COMMITMENT_REQUEST,
            STORAGE_COMMITMENT,
            STORAGE_COMMITMENT_INSTANCE,
        )
        _check_answer(target, answer, time.monotonic() - asked, float(ae.dimse_timeout or 0))
        deadline = time.monotonic() + wait
        while assoc.is_established and time.monotonic() < deadline:
            if reported.wait(0.05) or not commits.states_of(transaction_uid).get(REQUESTED):
                break  # reported here, or on a new association (the rows are settled)
    finally:
        if assoc.is_established:
            assoc.release()
    return reported.is_set()


def _check_answer(target: Target, answer: Any, waited: float, timeout: float) -> None:
    """PeerError, in words, unless the N-ACTION was answered with success or a warning.

    A peer that hangs up before our ``timeout`` refused the request without a status:
    Orthanc does so for an AE title missing in its DicomModalities, or one it does not
    allow storage commitment (``AllowStorageCommitment``)."""
    if not answer or "Status" not in answer:
        if waited < timeout:
            raise PeerError(
                f"{target}: the peer ended the association {waited:.1f} s after the storage"
                " commitment request, without a status: it refused it (is our AE title in"
                " its list of modalities, allowed storage commitment?)"
            )
        raise PeerError(f"{target}: no answer to the storage commitment request within"
                        f" {timeout:g} s")
    code = int(answer.Status)
    if code != status.SUCCESS and not status.is_warning(code):
        words = GENERAL_STATUS.get(code, ("", "failure"))[1]
        comment = str(answer.get("ErrorComment", "") or "").strip()
        raise PeerError(
            f"{target}: storage commitment request refused: {words} (0x{code:04X})"
            + (f" ({comment})" if comment else "")
        )
