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


def _parsed(stream: bytes, max_pdu: int) -> list[list[tuple[int, int, bytes]]]:
    """Every P-DATA-TF PDU of a stream, as its PDVs' (context ID, control header, fragment)."""
    import struct

    pdus, position = [], 0
    while position < len(stream):
        kind, _, length = struct.unpack_from(">BBI", stream, position)
        assert kind == 0x04 and length <= max_pdu
        end, position = position + 6 + length, position + 6
        pdvs = []
        while position < end:
            (item,) = struct.unpack_from(">I", stream, position)
            pdvs.append((stream[position + 4], stream[position + 5],
                         stream[position + 6 : position + 4 + item]))
            position += 4 + item
        assert position == end
        pdus.append(pdvs)
    return pdus


@pytest.mark.parametrize("length", [0, 1, 16378 - 200, 16378, 16379, 3 * 16378 + 7, 300_000])
@pytest.mark.parametrize("max_pdu", [16384, 0, 18])
def test_framed_pdus_carry_the_command_then_the_data_with_the_right_flags(
        length: int, max_pdu: int) -> None:
    from agent.net.engine.commands import _fragments, _pdus, _writes

    command = bytes(range(200)) * 1 + b"\x01" * 10
    data = bytes((n * 7) % 251 for n in range(length))
    stream = b"".join(
        bytes(part)
        for write in _writes(_pdus(3, _fragments(command, data, None, max_pdu)))
        for part in write.buffers)
    pdus = _parsed(stream, max_pdu or len(stream))
    # one PDV per PDU: GDCM takes a PDU holding command and data for all command
    assert [len(pdvs) for pdvs in pdus] == [1] * len(pdus)
    pdvs = [pdv for pdvs in pdus for pdv in pdvs]
    assert {cx for cx, _, _ in pdvs} == {3}
    commands = [(flag, piece) for _, flag, piece in pdvs if flag & 1]
    datas = [(flag, piece) for _, flag, piece in pdvs if not flag & 1]
    assert b"".join(piece for _, piece in commands) == command
    assert [flag for flag, _ in commands] == [0x01] * (len(commands) - 1) + [0x03]
    assert b"".join(piece for _, piece in datas) == data
    if data:
        assert [flag for flag, _ in datas] == [0x00] * (len(datas) - 1) + [0x02]
    assert pdvs.index((3, 0x03, commands[-1][1])) < len(commands)  # the command comes first


def test_messages_pynetdicom_frames_also_carry_one_pdv_per_pdu() -> None:
    """N-* messages (commitment reports, N-ACTION answers) take pynetdicom's framing."""
    from io import BytesIO

    from pynetdicom.dimse_messages import N_EVENT_REPORT_RQ
    from pynetdicom.dimse_primitives import N_EVENT_REPORT

    from agent.net import engine

    engine.install()
    primitive = N_EVENT_REPORT()
    primitive.MessageID, primitive.EventTypeID = 5, 1
    primitive.AffectedSOPClassUID = "1.2.840.10008.1.20.1"
    primitive.AffectedSOPInstanceUID = "1.2.840.10008.1.20.1.1"
    primitive.EventInformation = BytesIO(b"\x08\x00\x16\x00" * 3000)
    message = N_EVENT_REPORT_RQ()
    message.primitive_to_message(primitive)
    for max_pdu in (16384, 0):
        frames = list(message.encode_msg(1, max_pdu))
        assert len(frames) >= 2
        assert [len(f.presentation_data_value_list) for f in frames] == [1] * len(frames)
