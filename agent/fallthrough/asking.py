"""One association to a fall-through peer for C-FINDs: the requester's model where the
peer offers it, else Study Root below the patient level; a C-CANCEL from another thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID

from agent.config import Config
from agent.dicom.contexts import UNCOMPRESSED, qr_sop_class
from agent.dicom.models import Level, Model
from agent.dicom.status import PENDING_STATUSES
from agent.errors import PeerError
from agent.net.scu import Requestor, Target
from agent.qr.outcome import outcome_of

log = logging.getLogger(__name__)

FIND_MESSAGE_ID = 1


class FindAssociation:
    """C-FINDs to one peer over one association; ``cancel`` may come from any thread."""

    def __init__(self, config: Config, target: Target, models: list[Model], timeout: float):
        self.target = target
        self.timeout = timeout
        requestor = Requestor(config, timeout)
        ae = requestor.ae()
        for model in dict.fromkeys(models):
            ae.add_requested_context(qr_sop_class(model, "find"), list(UNCOMPRESSED))
        self._assoc = requestor.associate(ae, target)  # PeerError
        self._accepted = {str(cx.abstract_syntax): cx.context_id
                          for cx in self._assoc.accepted_contexts}
        self._asking: tuple[int, int] | None = None  # (message ID, context ID) of a C-FIND
        self._cancelled = False  # before a C-FIND went out: none goes
        self._lock = threading.Lock()

    def model_for(self, wanted: Model, level: Level) -> Model:
        """``wanted`` if the peer accepted it; else Study Root for a study level or
        below; else PeerError saying so."""
        if qr_sop_class(wanted, "find") in self._accepted:
            return wanted
        if level is not Level.PATIENT and qr_sop_class(Model.STUDY_ROOT, "find") in self._accepted:
            return Model.STUDY_ROOT
        raise PeerError(f"{self.target}: it does not offer {wanted.value.replace('_', ' ')} C-FIND")

    def find(self, model: Model, identifier: Dataset) -> Iterator[Dataset]:
        """Each answer of one C-FIND; PeerError for a failure or no answer in time."""
        sop_class = UID(qr_sop_class(model, "find"))
        with self._lock:
            if self._cancelled:
                return
            self._asking = (FIND_MESSAGE_ID, self._accepted[str(sop_class)])
        try:
            for status, answer in self._assoc.send_c_find(
                identifier, sop_class, msg_id=FIND_MESSAGE_ID
            ):
                if not status or "Status" not in status:
                    raise PeerError(f"{self.target}: no answer within {self.timeout:g} s")
                if int(status.Status) in PENDING_STATUSES:
                    if answer is not None:
                        yield answer
                    continue
                outcome = outcome_of(status, "find")
                if not outcome.succeeded and outcome.category != "Cancel":
                    raise PeerError(f"{self.target}: {outcome}")
                return
        finally:
            with self._lock:
                self._asking = None
        raise PeerError(f"{self.target}: the association ended before the answer")

    def cancel(self) -> None:
        """C-CANCEL the C-FIND running now (its final status then ends it); none
        goes out after this."""
        with self._lock:
            asking = self._asking
            self._cancelled = True
        if asking is None or not self._assoc.is_established:
            return
        try:
            self._assoc.send_c_cancel(*asking)
        except Exception as exc:  # the association may be ending under us: nothing to stop
            log.debug("could not C-CANCEL at %s: %s", self.target, exc)

    def close(self) -> None:
        """Release the association (abort it if a C-FIND is still unanswered)."""
        assoc: Any = self._assoc
        if not assoc.is_established:
            return
        if self._asking is not None:
            assoc.abort()
        else:
            assoc.release()
