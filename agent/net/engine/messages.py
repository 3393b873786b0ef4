"""How the engine frames what it sends: one PDV per P-DATA-TF, and the smallest PDU it needs.

PS3.8 Annex E lets one P-DATA-TF carry a message's last command fragment and its first
data set fragment as two PDVs, and the engine once joined them (half the PDUs per C-FIND
answer). GDCM 3.0.21 reads the whole PDU as the command and the next PDU as the data
set, so it lost every other answer. DCMTK and Orthanc send command and data set in
separate P-DATA-TF PDUs; so do we, for every message, on every path (the engine's own
framing in commands.py and pynetdicom's, which sends one P-DATA-TF per fragment). The
PDUs of one message still leave in one gathered write, so the cost is six header bytes
per PDU, not a system call.

A peer's Maximum Length Received bounds each P-DATA-TF's variable field (PS3.8 9.3.5
and D.1). Below ``MIN_PEER_PDU`` no PDV can carry its item header and a whole command
element header, and nothing could ever be answered: such an association is refused.
"""

from __future__ import annotations

import logging
from typing import Any

from pynetdicom.events import Event

log = logging.getLogger(__name__)

PDV_ITEM_HEADER = 5  # 4-byte item length + presentation context ID; the value holds the rest
PDV_HEADER = PDV_ITEM_HEADER + 1  # ... and the message control header byte
ELEMENT_HEADER = 12  # the smallest whole command element: tag, length, a 4-byte UL value
MIN_PEER_PDU = PDV_HEADER + ELEMENT_HEADER  # 18 bytes; 0 means unlimited (PS3.8 D.1)


def too_small(maximum_length: int | None) -> bool:
    """True if a peer's Maximum Length Received leaves no room for any PDV we must send."""
    return maximum_length is not None and 0 < maximum_length < MIN_PEER_PDU


def unanswerable(assoc: Any) -> int | None:
    """The peer's Maximum Length Received if nothing we send can fit in it, else None."""
    peer = assoc.requestor if assoc.is_acceptor else assoc.acceptor
    try:
        length = peer.maximum_length
    except Exception:  # no user information to read: pynetdicom decides as before
        return None
    return int(length) if too_small(length) else None


def abort_if_unanswerable(event: Event) -> None:
    """EVT_ESTABLISHED on associations we request: abort one the peer could never answer on.

    Sent nothing we could fit, a C-STORE or C-FIND would wait out the DIMSE timeout.
    """
    length = unanswerable(event.assoc)
    if length is None:
        return
    peer = event.assoc.acceptor
    log.warning(
        "aborted the association with %s at %s:%s: it takes P-DATA of at most %d bytes,"
        " fewer than the %d any message needs",
        peer.ae_title,
        peer.address,
        peer.port,
        length,
        MIN_PEER_PDU,
    )
    event.assoc.abort()
