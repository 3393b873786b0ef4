"""C-FIND as an SCU: ask a peer what it holds, collect the answers and the final status."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import UID

from agent.config import Config
from agent.dicom.contexts import UNCOMPRESSED, qr_sop_class
from agent.dicom.status import PENDING_STATUSES
from agent.errors import PeerError
from agent.net.scu import Requestor, Target
from agent.qr.identifiers import FindRequest
from agent.qr.outcome import FinalStatus, no_final_status, outcome_of

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class FindResult:
    """The answers to a C-FIND and how it ended."""

    target: Target
    request: FindRequest
    matches: tuple[Dataset, ...]
    outcome: FinalStatus


def find(
    config: Config, target: Target, request: FindRequest, *, timeout: float = 30.0
) -> FindResult:
    """Run one C-FIND; PeerError if no association or no final answer, else the result."""
    identifier = request.identifier()
    sop_class = UID(qr_sop_class(request.model.value, "find"))
    requestor = Requestor(config, timeout)
    ae = requestor.ae()
    ae.add_requested_context(sop_class, list(UNCOMPRESSED))
    assoc = requestor.associate(ae, target)
    matches: list[Dataset] = []
    try:
        _require_accepted(assoc, sop_class, target)
        since = time.monotonic()
        for status, answer in assoc.send_c_find(identifier, sop_class):
            if not status or "Status" not in status:
                waited = time.monotonic() - since
                why = no_final_status("C-FIND", waited, timeout, None, config.agent.ae_title)
                raise PeerError(f"{target}: {why}")
            since = time.monotonic()
            if int(status.Status) in PENDING_STATUSES:
                if answer is not None:
                    matches.append(answer)
                continue
            return FindResult(target, request, tuple(matches), outcome_of(status, "find"))
    finally:
        if assoc.is_established:
            assoc.release()
    raise PeerError(f"{target}: the C-FIND ended without a final status")


def _require_accepted(assoc: object, sop_class: UID, target: Target) -> None:
    """PeerError naming the model when the peer accepted the association but not the model."""
    accepted = {cx.abstract_syntax for cx in getattr(assoc, "accepted_contexts", [])}
    if sop_class not in accepted:
        raise PeerError(f"{target}: the peer does not offer {sop_class.name} (try -P, -S or -O)")
