"""C-MOVE and C-GET as an SCU: pull instances from a peer, reporting progress.

With ``move`` the peer opens its own association to the move destination (normally
this agent's Storage SCP); with ``get`` the instances come back on our association and
``on_store`` keeps each one, answering with the status its C-STORE deserves.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import StoragePresentationContexts, build_role, evt

from agent.config import Config
from agent.dicom.contexts import STORAGE_TRANSFER_SYNTAXES, UNCOMPRESSED, qr_sop_class
from agent.dicom.status import MOVE_DESTINATION_UNKNOWN, PENDING_STATUSES
from agent.errors import PeerError, UsageError
from agent.net.scu import Requestor, Target
from agent.qr.identifiers import RetrieveRequest
from agent.qr.outcome import FinalStatus, no_final_status, outcome_of

log = logging.getLogger(__name__)

Method = Literal["move", "get"]
StoreHandler = Callable[[Any], int | Dataset]  # a status, or one with its Error Comment
RETRIEVE_MESSAGE_ID = 1
MAX_STORAGE_CONTEXTS = 127  # 128 presentation contexts at most, one is the C-GET's own
DEFAULT_STORAGE_CLASSES = tuple(str(cx.abstract_syntax) for cx in StoragePresentationContexts)


@dataclass(frozen=True)
class Progress:
    """Sub-operation counts from a pending (or the final) response."""

    remaining: int | None
    completed: int
    failed: int
    warning: int

    @property
    def done(self) -> int:
        """Sub-operations finished, whatever their outcome."""
        return self.completed + self.failed + self.warning


@dataclass(frozen=True)
class RetrieveResult:
    """How a C-MOVE or C-GET ended."""

    target: Target
    method: Method
    outcome: FinalStatus
    progress: Progress
    failed_uids: tuple[str, ...]

    @property
    def complete(self) -> bool:
        """Every sub-operation succeeded (or warned) and the peer said so."""
        return self.outcome.succeeded and self.progress.failed == 0 and not self.failed_uids

    @property
    def moved_nothing(self) -> bool:
        """A C-MOVE refused before any sub-operation: 0xA801, or a failure with nothing
        done (how Orthanc 1.10 says it does not know the destination: 0xC000). A C-GET
        may still work: it needs no destination."""
        if self.outcome.status == MOVE_DESTINATION_UNKNOWN:
            return True
        done = self.progress.completed + self.progress.warning
        return self.outcome.category == "Failure" and done == 0


def retrieve(
    config: Config,
    target: Target,
    request: RetrieveRequest,
    *,
    method: Method,
    destination: str | None = None,
    on_store: StoreHandler | None = None,
    storage_classes: Sequence[str] = DEFAULT_STORAGE_CLASSES,
    on_progress: Callable[[Progress], None] = lambda progress: None,
    timeout: float = 60.0,
    clock: Callable[[], float] = time.monotonic,
    cancelled: Callable[[], bool] = lambda: False,
) -> RetrieveResult:
    """Run one C-MOVE (to ``destination``, default our AE) or C-GET (into ``on_store``).

    ``clock`` tells a peer that ended the association from one silent too long; once
    ``cancelled()``, the next pending response is answered with a C-CANCEL."""
    identifier = request.identifier()
    sop_class = UID(qr_sop_class(request.model.value, method))
    requestor = Requestor(config, timeout)
    ae = requestor.ae()
    ae.add_requested_context(sop_class, list(UNCOMPRESSED))
    handlers: list[Any] = []
    roles: list[Any] = []
    if method == "get":
        if on_store is None:
            raise UsageError("a C-GET needs somewhere to keep what arrives")
        for storage_class in list(dict.fromkeys(storage_classes))[:MAX_STORAGE_CONTEXTS]:
            ae.add_requested_context(storage_class, list(STORAGE_TRANSFER_SYNTAXES))
            roles.append(build_role(storage_class, scp_role=True))
        handlers.append((evt.EVT_C_STORE, on_store))
    assoc = requestor.associate(ae, target, ext_neg=roles, extra_handlers=handlers)
    try:
        if sop_class not in {cx.abstract_syntax for cx in assoc.accepted_contexts}:
            raise PeerError(f"{target}: the peer does not offer {sop_class.name}")
        if method == "move":
            responses = assoc.send_c_move(
                identifier, destination or config.agent.ae_title, sop_class,
                msg_id=RETRIEVE_MESSAGE_ID,
            )
        else:
            responses = assoc.send_c_get(identifier, sop_class, msg_id=RETRIEVE_MESSAGE_ID)
        waiting = Waiting(target, method, timeout, config.agent.ae_title, clock)
        return _follow(responses, waiting, _cancelling(assoc, sop_class, cancelled, on_progress))
    finally:
        if assoc.is_established:
            assoc.release()


def _cancelling(
    assoc: Any, sop_class: str, cancelled: Callable[[], bool],
    on_progress: Callable[[Progress], None],
) -> Callable[[Progress], None]:
    """``on_progress``, then one C-CANCEL (message 1, the retrieve's) once ``cancelled()``."""
    sent = False

    def progressed(progress: Progress) -> None:
        nonlocal sent
        on_progress(progress)
        if sent or not cancelled():
            return
        sent = True
        context = next(cx.context_id for cx in assoc.accepted_contexts
                       if cx.abstract_syntax == sop_class)
        assoc.send_c_cancel(RETRIEVE_MESSAGE_ID, context)

    return progressed


@dataclass(frozen=True)
class Waiting:
    """What ``_follow`` needs to say why a retrieve ended without a final status."""

    target: Target
    method: Method
    timeout: float
    our_ae: str
    clock: Callable[[], float] = time.monotonic


def _follow(
    responses: Any, waiting: Waiting, on_progress: Callable[[Progress], None]
) -> RetrieveResult:
    """Report each pending response; return the final one as a result."""
    target, method = waiting.target, waiting.method
    last = Progress(None, 0, 0, 0)
    since = waiting.clock()
    for status, identifier in responses:
        if not status or "Status" not in status:
            why = no_final_status(f"C-{method.upper()}", waiting.clock() - since,
                                  waiting.timeout, last.done, waiting.our_ae)
            raise PeerError(f"{target}: {why}")
        since = waiting.clock()
        last = _progress(status, last)
        if int(status.Status) in PENDING_STATUSES:
            on_progress(last)
            continue
        return RetrieveResult(
            target, method, outcome_of(status, method), last, _failed_uids(identifier)
        )
    raise PeerError(f"{target}: the C-{method.upper()} ended without a final status")


def _progress(status: Dataset, previous: Progress) -> Progress:
    """Counts from a response; a final response may leave them out (keep the last seen)."""

    def count(keyword: str, fallback: int) -> int:
        value = status.get(f"NumberOf{keyword}Suboperations")
        return int(value) if value is not None and value != "" else fallback

    remaining = status.get("NumberOfRemainingSuboperations")
    return Progress(
        int(remaining) if remaining not in (None, "") else None,
        count("Completed", previous.completed),
        count("Failed", previous.failed),
        count("Warning", previous.warning),
    )


def _failed_uids(identifier: Dataset | None) -> tuple[str, ...]:
    """The Failed SOP Instance UID List of a final response, if the peer sent one."""
    if identifier is None:
        return ()
    value = identifier.get("FailedSOPInstanceUIDList")
    if value is None or value == "":
        return ()
    values = [value] if isinstance(value, str) else list(value)
    return tuple(str(uid).strip() for uid in values if str(uid).strip())
