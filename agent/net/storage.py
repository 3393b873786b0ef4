"""C-ECHO and C-STORE handlers: translate between pynetdicom events and the archive.

They never raise: every failure becomes a DICOM status and one log line. Patient data
stays out of log lines above debug level.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.archive import Archive
from agent.errors import StoreError
from agent.net.access import Caller
from agent.status import StatusModel

log = logging.getLogger(__name__)

SUCCESS = 0x0000
NOT_AUTHORISED = 0x0124
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
        """After any association: drop a data set it left half-received, and say so."""
        if discard_partial_receive(assoc):
            self.status.refused("a data set was cut off mid-transfer (sender gone or disk full)")


def discard_partial_receive(assoc: Any) -> bool:
    """Delete the half-received data set of an association; True if there was one.

    pynetdicom keeps the message being decoded in ``assoc.dimse.message``; a complete
    message is handed on and reset, so whatever remains there was cut off.
    """
    message = getattr(getattr(assoc, "dimse", None), "message", None)
    partial = getattr(message, "_data_set_file", None)
    if partial is None:
        return False
    with contextlib.suppress(OSError):
        partial.close()
    with contextlib.suppress(OSError):
        os.unlink(partial.name)
    log.warning("discarded a data set that was cut off mid-transfer")
    return True
