"""The engine's direct writes: a sub-operation's PDUs leave from the sending thread only
when nothing is queued ahead of them, on an established plain TCP association.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from agent.net.engine.dul import EncodedPData, EventDrivenDUL


class _Association:
    """Just enough of an Association for a DUL to be built (its thread is never run)."""

    network_timeout = None
    acse_timeout = None


@pytest.fixture
def wired() -> Iterator[tuple[EventDrivenDUL, socket.socket]]:
    """A DUL in Sta6 whose socket is one end of a pair; the other end is returned."""
    ours, theirs = socket.socketpair()
    dul = EventDrivenDUL(_Association())
    dul.socket = SimpleNamespace(socket=ours)  # type: ignore[assignment]
    dul.state_machine.current_state = "Sta6"
    theirs.settimeout(5)
    try:
        yield dul, theirs
    finally:
        ours.close()
        theirs.close()


def _unread(sock: socket.socket) -> bytes:
    sock.setblocking(False)
    try:
        return sock.recv(1 << 16)
    except BlockingIOError:
        return b""


def test_a_write_with_nothing_ahead_leaves_at_once(wired: tuple[EventDrivenDUL, socket.socket]
                                                   ) -> None:
    dul, theirs = wired
    dul.send_pdu(EncodedPData([b"\x04\x00", memoryview(b"xxPDUxx")[2:5]]))
    assert dul.to_provider_queue.empty()
    assert theirs.recv(16) == b"\x04\x00PDU"


def test_a_write_queues_behind_what_the_loop_has_not_sent(
        wired: tuple[EventDrivenDUL, socket.socket]) -> None:
    dul, theirs = wired
    dul.to_provider_queue.put("an earlier primitive")
    dul.send_pdu(EncodedPData([b"later"]))
    assert dul.to_provider_queue.qsize() == 2  # in order, for the loop
    assert _unread(theirs) == b""


def test_a_write_waits_for_the_loop_while_an_event_is_unhandled(
        wired: tuple[EventDrivenDUL, socket.socket]) -> None:
    dul, theirs = wired
    dul.event_queue.put("Evt12")  # say, a release request the loop has not acted on yet
    dul.send_pdu(EncodedPData([b"later"]))
    assert dul.to_provider_queue.qsize() == 1
    assert _unread(theirs) == b""


@pytest.mark.parametrize("state", ["Sta7", "Sta13"])
def test_no_write_leaves_directly_once_the_association_is_ending(
        wired: tuple[EventDrivenDUL, socket.socket], state: str) -> None:
    dul, theirs = wired
    dul.state_machine.current_state = state
    dul.send_pdu(EncodedPData([b"late"]))
    assert dul.to_provider_queue.qsize() == 1  # the loop decides (and drops it)
    assert _unread(theirs) == b""
