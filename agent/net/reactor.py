"""Keep pynetdicom's reactor from taking responses meant for ``send_c_store``.

pynetdicom pauses an association's reactor thread around each ``send_*`` call with a
flag handshake that has a window: now and then the reactor takes the C-STORE response
off the queue first ("Received unexpected C-STORE service message"), and the send then
waits the whole DIMSE timeout (seen about once per few thousand sub-operations). On
the associations the agent requests to send (forwarding, C-MOVE sub-operations, echo)
the peer never sends requests, so the reactor's non-blocking look at the message queue
is answered "nothing"; it still handles release and abort as before. Not for an
association whose peer sends us C-STOREs (a C-GET we request).
"""

from __future__ import annotations

from typing import Any

from pynetdicom import evt

from agent.net.sockets import on_connection_open


def reserve_responses(event: Any) -> None:
    """EVT_ACCEPTED: only blocking reads (a ``send_*`` waiting for its answer) get messages."""
    dimse = event.assoc.dimse
    take = dimse.get_msg

    def get_msg(block: bool = False) -> Any:
        return take(block=True) if block else (None, None)

    dimse.get_msg = get_msg


def requestor_handlers() -> list[Any]:
    """Event handlers for the associations the agent requests to send on."""
    return [
        (evt.EVT_CONN_OPEN, on_connection_open),
        (evt.EVT_ACCEPTED, reserve_responses),
    ]
