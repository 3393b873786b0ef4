"""A C-MOVE destination we know but cannot reach: a sub-operation failure, not 0xA801.

pynetdicom's move SCP (``QueryRetrieveServiceClass._move_scp``) opens the destination
association through the listener's AE (``self.ae.associate``) and, when it does not
come up, answers 0xA801 "Move Destination Unknown" itself, before the handler is asked
again, and logs nothing that names the destination. PS3.4 C.4.2.1.4 keeps 0xA801 for
a destination the SCP does not know; one it knows but cannot store to is "Refused: Out
of Resources - Unable to perform sub-operations" (0xA702).

``ListenerAE`` therefore hands pynetdicom a stand-in for an association that did not
come up: established in name only, so that pynetdicom asks the handler for its next
yield. The handler takes the failed association with ``failed_destination()`` (same
thread), finds out why, logs it and ends the C-MOVE with 0xA702 and the Failed SOP
Instance UID List. A handler that does not look still ends right: every C-STORE on the
stand-in fails at once, and pynetdicom answers 0xA702 when all sub-operations failed.
"""

from __future__ import annotations

import threading
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE

from agent.dicom.status import OUT_OF_RESOURCES

_failed = threading.local()


class UnreachableDestination:
    """Stands in for a move destination association that did not come up."""

    is_established = True  # in name only: pynetdicom then asks the handler again
    is_aborted = is_released = is_rejected = False

    def __init__(self, failed: Any) -> None:
        self.failed = failed

    def send_c_store(self, dataset: Any, *args: Any, **kwargs: Any) -> Dataset:
        """Nothing can be sent: every sub-operation fails at once."""
        status = Dataset()
        status.Status = OUT_OF_RESOURCES  # a C-STORE status pynetdicom counts as failed
        return status

    def release(self) -> None:
        """Nothing to release: the real association never came up."""

    def abort(self) -> None:
        """Nothing to abort."""


class ListenerAE(AE):
    """The listener's AE: a move destination that cannot be reached gets a stand-in."""

    def associate(self, addr: Any, port: int, *args: Any, **kwargs: Any) -> Any:
        """pynetdicom's ``associate``; if the association fails, an UnreachableDestination
        (the failed one kept for ``failed_destination()`` in this thread)."""
        assoc = super().associate(addr, port, *args, **kwargs)
        if assoc.is_established:
            return assoc
        socket = getattr(assoc.dul, "socket", None)
        if socket is not None:
            socket.close()  # as pynetdicom's own 0xA801 path does
        _failed.assoc = assoc
        return UnreachableDestination(assoc)


def failed_destination() -> Any | None:
    """The association to a move destination that failed last in this thread, once."""
    assoc = getattr(_failed, "assoc", None)
    _failed.assoc = None
    return assoc
