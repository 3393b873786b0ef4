"""C-ECHO and C-STORE handlers: translate between pynetdicom events and the archive.

They never raise: every failure becomes a DICOM status and one log line. Patient data
stays out of log lines above debug level.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.archive import Archive
from agent.errors import StoreError
from agent.net.access import NOT_AUTHORISED, Caller
from agent.net.engine import guards
from agent.status import StatusModel

log = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700

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
            return NOT_AUTHORISED
        return SUCCESS

    def on_store(self, event: Any) -> int:
        """C-STORE: Success only once the instance is durable and indexed."""
        caller = self.caller_of(event.assoc)
        if caller is None or not caller.may("store"):
            log.warning("refused C-STORE from %s: not allowed", caller)
            self.status.refused("C-STORE from a peer without 'store' permission")
            return NOT_AUTHORISED
        request = event.request
        try:
            stored = self.archive.ingest(
                Path(event.dataset_path),
                sop_class_uid=str(request.AffectedSOPClassUID),
                sop_instance_uid=str(request.AffectedSOPInstanceUID),
                calling_ae=caller.ae_title,
            )
        except StoreError as exc:
            log.warning("C-STORE from %s answered 0x%04X: %s", caller, exc.status, exc)
            self.status.refused(f"0x{exc.status:04X} {exc}")
            return exc.status
        except Exception:  # the handler must answer, whatever went wrong
            log.exception("C-STORE from %s failed unexpectedly; answered 0xA700", caller)
            self.status.refused("0xA700 unexpected error while storing")
            return OUT_OF_RESOURCES
        log.debug("stored %s from %s (%s)", stored.sop_instance_uid, caller, stored.outcome)
        self.status.stored(stored.outcome, stored.size)
        return SUCCESS

    def on_association_end(self, assoc: Any) -> None:
        """After any association: delete every data set it received and did not archive."""
        partial, complete = guards.discard_unarchived(assoc)
        if partial:
            log.warning("discarded a data set that was cut off mid-transfer")
            self.status.refused("a data set was cut off mid-transfer (sender gone or disk full)")
        if complete:
            log.warning("discarded %d received data sets that were never answered", complete)
            self.status.refused("a received data set was never answered (malformed command)")
