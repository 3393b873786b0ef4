"""Sending a DIMSE message without building a pydicom Dataset for its command set.

pynetdicom turns every primitive into a message whose command set is a pydicom Dataset,
encodes it once to learn its group length and again to send it: about 0.2 ms of one
core per message, more than the rest of a C-FIND answer or a C-STORE response. A
command set is a handful of elements of five VRs, always Implicit VR Little Endian, so
we encode it directly from the primitive (tests/test_engine_contract.py checks the
bytes against pynetdicom's for every message we send). Anything unusual (a value of a
type we do not expect, an event handler that wants the message object) takes
pynetdicom's own path.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from functools import cache
from io import BytesIO
from typing import Any, cast

from pynetdicom import evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import _DATASET_KEYWORDS, _MESSAGE_TYPES
from pynetdicom.dimse_primitives import (
    C_CANCEL,
    C_ECHO,
    C_FIND,
    C_GET,
    C_MOVE,
    C_STORE,
    DIMSEPrimitive,
)

from agent.dicom.wire import encode_header
from agent.net.engine import finals
from agent.net.engine.dul import EncodedPData, EventDrivenDUL
from agent.net.engine.messages import PDV_HEADER

_original_send: Callable[..., None] = DIMSEServiceProvider.send_msg
_FAST = (C_ECHO, C_FIND, C_GET, C_MOVE, C_STORE)
# a P-DATA-TF (type, reserved, length) carrying one PDV item (length, context ID, control)
_ONE_PDV_HEADER = struct.Struct(">BBIIBB")
_GROUP_LENGTH = 0x00000000  # (0000,0000) Command Group Length
_COMMAND_FIELD = {name: code for code, (name, _) in _MESSAGE_TYPES.items()}


class NotFast(Exception):
    """This message takes pynetdicom's own path."""


_CLASSES = dict(_MESSAGE_TYPES.values())


@cache
def _template(message_name: str) -> tuple[tuple[int, str, str], ...]:
    """(tag, keyword, VR) of a message type's command elements, in tag order."""
    message = _CLASSES[message_name]()
    return tuple((int(e.tag), e.keyword, e.VR) for e in message.command_set)


def _value_bytes(vr: str, value: Any) -> bytes:
    if vr == "US":
        return struct.pack("<H", value)
    if vr == "UL":
        return struct.pack("<I", value)
    if vr == "AT":
        tags = value if isinstance(value, (list, tuple)) else [value]
        return b"".join(struct.pack("<HH", int(t) >> 16, int(t) & 0xFFFF) for t in tags)
    if vr in ("UI", "AE", "LO", "SH", "CS") and isinstance(value, str) and value.isascii():
        raw = value.encode("ascii")
        return raw + (b"\0" if vr == "UI" else b" ") if len(raw) % 2 else raw
    raise NotFast(f"{vr} value {value!r}")


def encode_command(message_name: str, primitive: Any, has_data: bool) -> bytes:
    """The Implicit VR Little Endian command set pynetdicom would send; NotFast if unsure."""
    parts = []
    for tag, keyword, vr in _template(message_name):
        if keyword == "CommandGroupLength":
            continue
        if keyword == "CommandField":
            value: Any = _COMMAND_FIELD[message_name]
        elif keyword == "CommandDataSetType":
            value = 0x0001 if has_data else 0x0101
        elif hasattr(primitive, keyword):
            value = getattr(primitive, keyword)
            if value is None:
                continue
        else:
            raise NotFast(keyword)
        encoded = _value_bytes(vr, value)
        parts.append(encode_header(tag, len(encoded)) + encoded)
    body = b"".join(parts)
    group_length = _value_bytes("UL", len(body))
    return encode_header(_GROUP_LENGTH, len(group_length)) + group_length + body


def _message_name(primitive: Any) -> str:
    kind = type(primitive).__name__.replace("_", "-")
    return f"{kind}-{'RQ' if primitive.MessageIDBeingRespondedTo is None else 'RSP'}"


READ_BLOCK = 1 << 20  # bytes read from a file at a time
WRITE_BLOCK = 256 * 1024  # bytes of encoded PDUs handed to the socket in one write
Buffer = bytes | memoryview


def _chunks(data: bytes | BytesIO | None, path: Any, size: int) -> Iterator[Buffer]:
    """The data set in pieces of at most ``size`` bytes, as views (a file is read as it goes).

    Slicing a view copies nothing: the bytes read from the file are copied once more only
    by the kernel, when the socket takes them.
    """
    contents = getattr(path, "contents", None)
    if path is not None and contents is not None:
        view = memoryview(contents)
        for start in range(path[1], len(contents), size):
            yield view[start : start + size]
        return
    if path is not None:
        with open(path[0], "rb", buffering=0) as handle:
            handle.seek(path[1])
            while block := handle.read(READ_BLOCK):
                view = memoryview(block)
                for start in range(0, len(block), size):
                    yield view[start : start + size]
        return
    raw = data.getvalue() if isinstance(data, BytesIO) else data or b""
    view = memoryview(raw)
    for start in range(0, len(raw), size):
        yield view[start : start + size]


def _fragments(command: bytes, data: Any, path: Any, max_pdu: int) -> Iterator[tuple[int, Buffer]]:
    """(control header, fragment) for the command, then for the data set."""
    size = max_pdu - PDV_HEADER if max_pdu else max(len(command), 1 << 30)
    pieces = [command[i : i + size] for i in range(0, len(command), size)]
    for index, piece in enumerate(pieces):
        yield (0x03 if index == len(pieces) - 1 else 0x01), piece
    held: Buffer | None = None
    for chunk in _chunks(data, path, size):
        if held is not None:
            yield 0x00, held
        held = chunk
    if held is not None:
        yield 0x02, held


def _pdus(
    context_id: int, fragments: Iterator[tuple[int, Buffer]]
) -> Iterator[tuple[list[Buffer], int]]:
    """P-DATA-TF PDUs (buffers, byte count), one PDV each: never command and data together.

    GDCM reads a PDU that carries both as all command (messages.py says why).
    """
    for control, piece in fragments:
        used = PDV_HEADER + len(piece)
        header = _ONE_PDV_HEADER.pack(0x04, 0, used, len(piece) + 2, context_id, control)
        yield [header, piece], used + 6


def _writes(pdus: Iterator[tuple[list[Buffer], int]]) -> Iterator[EncodedPData]:
    """Consecutive PDUs gathered into writes of about WRITE_BLOCK bytes."""
    batch: list[Buffer] = []
    size = 0
    for parts, count in pdus:
        batch += parts
        size += count
        if size >= WRITE_BLOCK:
            yield EncodedPData(batch)
            batch, size = [], 0
    if batch:
        yield EncodedPData(batch)


def _fast_lane(dimse: DIMSEServiceProvider, primitive: DIMSEPrimitive | C_CANCEL) -> bool:
    """True if nobody wants pynetdicom's objects for this message, its PDUs or its bytes."""
    if not isinstance(primitive, _FAST) or not isinstance(dimse.dul, EventDrivenDUL):
        return False
    watched = (evt.EVT_DIMSE_SENT, evt.EVT_PDU_SENT, evt.EVT_DATA_SENT)
    return not any(dimse.assoc.get_handlers(event) for event in watched)


def send_msg(
    self: DIMSEServiceProvider, primitive: DIMSEPrimitive | C_CANCEL, context_id: int
) -> None:
    """DIMSEServiceProvider.send_msg with the command set encoded directly."""
    if finals.redundant(self, primitive):
        return
    if not _fast_lane(self, primitive):
        _original_send(self, primitive, context_id)
        return
    name = _message_name(primitive)
    keyword = _DATASET_KEYWORDS.get(name.replace("-", "_"))
    data = getattr(primitive, keyword) if keyword else None
    path = getattr(primitive, "_dataset_path", None)
    has_data = bool(path) or bool(data)  # as pynetdicom: any data set object counts
    try:
        command = encode_command(name, primitive, has_data)
    except NotFast:
        _original_send(self, primitive, context_id)
        return
    max_pdu = self.maximum_pdu_size
    fragments = _fragments(command, data, path, max_pdu)
    dul = cast(EventDrivenDUL, self.dul)  # as _fast_lane made sure
    for write in _writes(_pdus(context_id, fragments)):
        dul.send_pdu(write)
