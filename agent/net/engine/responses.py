"""Received C-STORE responses decoded without building a pydicom Dataset.

Every C-STORE sub-operation of a C-GET or C-MOVE (and every instance the forwarder
sends) ends with the peer's C-STORE-RSP: a command set of a few US and UI elements in
Implicit VR Little Endian. pynetdicom decodes it into a Dataset and then copies each
element into a primitive, about a fifth of what one sub-operation costs us. The plain
response (status, message ID, the two UIDs) is decoded here; anything else (an Error
Comment, an Offending Element, a message split over PDVs) takes pynetdicom's path.
tests/test_engine_contract.py checks the primitives against pynetdicom's own.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE

from agent.dicom.wire import IMPLICIT_LE, read_header

C_STORE_RSP = 0x8001
NO_DATA_SET = 0x0101
LAST_COMMAND_FRAGMENT = 0x03  # PS3.8 E.2: command information, last fragment
_US = struct.Struct("<H")
# tag (group 0000) -> (keyword, VR) of what a plain C-STORE-RSP holds
_PLAIN: dict[int, tuple[str, str]] = {
    0x00000000: ("CommandGroupLength", "UL"),
    0x00000002: ("AffectedSOPClassUID", "UI"),
    0x00000100: ("CommandField", "US"),
    0x00000120: ("MessageIDBeingRespondedTo", "US"),
    0x00000800: ("CommandDataSetType", "US"),
    0x00000900: ("Status", "US"),
    0x00001000: ("AffectedSOPInstanceUID", "UI"),
}
_REQUIRED = frozenset({"CommandField", "MessageIDBeingRespondedTo", "CommandDataSetType", "Status"})


def _elements(command: bytes) -> tuple[dict[str, int], dict[str, str]] | None:
    """A plain C-STORE-RSP's numbers and UIDs by keyword; None if it holds anything else."""
    numbers: dict[str, int] = {}
    uids: dict[str, str] = {}
    position = 0
    while position < len(command):
        header = read_header(command, position, IMPLICIT_LE)
        if header is None:
            return None
        tag, _vr, length, size = header
        position += size
        known = _PLAIN.get(tag)
        if known is None or position + length > len(command):
            return None
        keyword, vr = known
        raw = command[position : position + length]
        position += length
        if vr == "UL":
            continue  # the group length: the PDV's own length is what counts
        if vr == "US":
            if length != 2:
                return None
            numbers[keyword] = _US.unpack(raw)[0]
        elif vr == "UI":
            if not raw.isascii():
                return None
            uids[keyword] = raw.rstrip(b"\0 ").decode("ascii")
    return numbers, uids


def plain_store_response(command: bytes) -> C_STORE | None:
    """The C-STORE-RSP primitive of a command set, if it is a plain one; else None."""
    decoded = _elements(command)
    if decoded is None or not decoded[0].keys() >= _REQUIRED:
        return None
    numbers, uids = decoded
    if numbers["CommandField"] != C_STORE_RSP or numbers["CommandDataSetType"] != NO_DATA_SET:
        return None
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = numbers["MessageIDBeingRespondedTo"]
    primitive.Status = numbers["Status"]
    if uids.get("AffectedSOPClassUID"):
        primitive.AffectedSOPClassUID = uids["AffectedSOPClassUID"]
    if uids.get("AffectedSOPInstanceUID"):
        primitive.AffectedSOPInstanceUID = uids["AffectedSOPInstanceUID"]
    return primitive


# EVT_DIMSE_RECV handlers that look only at messages with a data set (guards.py adds its own)
BLIND_TO_COMMANDS: set[Callable[..., Any]] = set()


def _watched(assoc: Association) -> bool:
    """True if an EVT_DIMSE_RECV handler may want to see a command-only message."""
    for entry in assoc.get_handlers(evt.EVT_DIMSE_RECV):
        handler = entry[0] if isinstance(entry, tuple) else entry
        if handler not in BLIND_TO_COMMANDS:
            return True
    return False


def deliver_store_response(assoc: Association, values: list[tuple[int, bytes]]) -> bool:
    """Queue a plain C-STORE-RSP for the association at once; False if pynetdicom must.

    Only a whole command in one PDV, with no message half-received and no handler that
    may want the DIMSE message, qualifies.
    """
    dimse = assoc.dimse
    if len(values) != 1 or dimse.message is not None:
        return False
    context_id, value = values[0]
    if not value or value[0] != LAST_COMMAND_FRAGMENT or _watched(assoc):
        return False
    primitive = plain_store_response(value[1:])
    if primitive is None:
        return False
    primitive._context_id = context_id
    dimse.msg_queue.put((context_id, primitive))
    return True
