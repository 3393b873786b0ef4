"""C-ECHO and C-STORE handlers: translate between pynetdicom events and the archive.

They never raise: every failure becomes a DICOM status and one log line. Patient data
stays out of log lines above debug level. Local trouble (the disk full or below its
floor, an I/O or fsync error, while receiving or archiving) is answered 0xA700 with the
reason as Error Comment, on an association that stays usable, and written once a
minute, then counted (peerlog), whichever peer met it: it is this box's, not theirs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from agent.archive import Archive
from agent.dicom.status import NOT_AUTHORIZED, OUT_OF_RESOURCES, SUCCESS, is_out_of_resources
from agent.errors import StoreError
from agent.net import peerlog
from agent.net.access import Caller
from agent.net.engine import guards, received
from agent.status import StatusModel

log = logging.getLogger(__name__)

LOCAL = "this box"  # whom local trouble is counted against (peerlog), whoever met it
COMMENT_LENGTH = 64  # Error Comment is LO


CallerLookup = Callable[[Any], Caller | None]


class StorageHandlers:
    """The Verification and Storage service handlers bound to our server."""

    def __init__(self, archive: Archive, status: StatusModel, caller_of: CallerLookup) -> None:
        self.archive = archive
        self.status = status
        self.caller_of = caller_of

    def on_echo(self, event: Any) -> int:
        """C-ECHO: Success for peers allowed to echo."""
        caller = self.caller_of(event.assoc)
        if caller is None or not caller.may("echo"):
            log.warning("refused C-ECHO from %s: not allowed", caller)
            return NOT_AUTHORIZED
        return SUCCESS

    def on_store(self, event: Any) -> int | Dataset:
        """C-STORE: Success only once the instance is durable and indexed; the time it
        took (from the handler's call to its answer) goes to the status model's histogram."""
        started = time.monotonic()
        try:
            return self._store(event)
        finally:
            self.status.timings.cstore.observe(time.monotonic() - started)

    def _store(self, event: Any) -> int | Dataset:
        caller = self.caller_of(event.assoc)
        if caller is None or not caller.may("store"):
            log.warning("refused C-STORE from %s: not allowed", caller)
            self.status.refused("C-STORE from a peer without 'store' permission", NOT_AUTHORIZED)
            return NOT_AUTHORIZED
        request = event.request
        failed = received.write_failure(request)
        if failed is not None:
            reason = f"cannot write the received data set: {failed.strerror or failed}"
            return self._local_trouble(caller, reason)
        try:
            stored = self.archive.ingest(
                Path(event.dataset_path),
                sop_class_uid=str(request.AffectedSOPClassUID),
                sop_instance_uid=str(request.AffectedSOPInstanceUID),
                calling_ae=caller.ae_title,
            )
        except StoreError as exc:
            if is_out_of_resources(exc.status):
                return self._local_trouble(caller, str(exc), exc.status)
            log.warning("C-STORE from %s answered 0x%04X: %s", caller, exc.status, exc)
            self.status.refused(f"0x{exc.status:04X} {exc}", exc.status)
            return answer(exc.status, str(exc))
        except Exception:  # the handler must answer, whatever went wrong
            log.exception("C-STORE from %s failed unexpectedly; answered 0xA700", caller)
            self.status.refused("0xA700 unexpected error while storing", OUT_OF_RESOURCES)
            return OUT_OF_RESOURCES
        log.debug("stored %s from %s (%s)", stored.sop_instance_uid, caller, stored.outcome)
        self.status.stored(stored.outcome, stored.size)
        return SUCCESS

    def _local_trouble(
        self, caller: Caller, reason: str, status: int = OUT_OF_RESOURCES
    ) -> Dataset:
        """Answer 0xA7xx with the reason; one warning a minute for all peers, then a count."""
        with peerlog.speaking_of(LOCAL):
            log.warning("local trouble, C-STORE answered 0x%04X: %s", status, reason)
        log.debug("the C-STORE answered 0x%04X came from %s", status, caller)
        self.status.refused(f"0x{status:04X} {reason}", status)
        return answer(status, reason)

    def on_association_end(self, assoc: Any) -> None:
        """After any association: delete every data set it received and did not archive."""
        partial, complete = guards.discard_unarchived(assoc)
        if partial:
            log.warning("discarded a data set that was cut off mid-transfer")
            self.status.refused("a data set was cut off mid-transfer (sender gone or disk full)")
        if complete:
            log.warning("discarded %d received data sets that were never answered", complete)
            self.status.refused("a received data set was never answered (malformed command)")


def answer(status: int, comment: str) -> Dataset:
    """A C-STORE status with an Error Comment (cut to the 64 characters LO holds)."""
    reply = Dataset()
    reply.Status = status
    reply.ErrorComment = comment.encode("ascii", "replace").decode("ascii")[:COMMENT_LENGTH]
    return reply
