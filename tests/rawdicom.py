"""A DICOM peer on a raw socket, for tests that must send what no real client would.

PDUs are built byte by byte (PS3.8 9.3), so a test can break any field of them; command
sets and data sets are encoded with pydicom, then cut or relabelled at will.
"""

from __future__ import annotations

import io
import socket
import struct
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pynetdicom.dsutils import decode, encode

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
ASSOCIATE_AC, ASSOCIATE_RJ, P_DATA, RELEASE_RQ, RELEASE_RP, ABORT = 2, 3, 4, 5, 6, 7

Context = tuple[int, str, tuple[str, ...]]


def item(kind: int, body: bytes) -> bytes:
    """A variable item: type, reserved, 2-byte length, body."""
    return struct.pack(">BBH", kind, 0, len(body)) + body


def pdu(kind: int, body: bytes) -> bytes:
    """A PDU: type, reserved, 4-byte length, body."""
    return struct.pack(">BBI", kind, 0, len(body)) + body


def associate_rq(
    contexts: list[Context], calling: str = "MODALITY", called: str = "EDGE",
    max_pdu: int = 65536,
) -> bytes:
    """An A-ASSOCIATE-RQ proposing ``contexts`` as (ID, abstract syntax, transfer syntaxes)."""
    body = struct.pack(">HH", 1, 0) + called.ljust(16).encode() + calling.ljust(16).encode()
    body += bytes(32) + item(0x10, APPLICATION_CONTEXT.encode())
    for context_id, abstract, syntaxes in contexts:
        sub = item(0x30, abstract.encode()) + b"".join(item(0x40, s.encode()) for s in syntaxes)
        body += item(0x20, bytes([context_id, 0, 0, 0]) + sub)
    user = item(0x51, struct.pack(">I", max_pdu)) + item(0x52, b"1.2.826.0.1.3680043.9.9999")
    return pdu(1, body + item(0x50, user))


def p_data(context_id: int, control: int, payload: bytes) -> bytes:
    """One P-DATA-TF with one PDV (control: 1 command, 2 last fragment)."""
    return pdu(P_DATA, struct.pack(">I", len(payload) + 2) + bytes([context_id, control]) + payload)


def command_set(**elements: object) -> bytes:
    """A command set in implicit VR little endian, with its group length."""
    ds = Dataset()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    body = encode(ds, True, True)
    assert body is not None
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body


def store_command(sop_class: str, sop_instance: str, message_id: int | None = 1) -> bytes:
    """A C-STORE-RQ command set; ``message_id=None`` leaves the Message ID out."""
    elements: dict[str, object] = {
        "AffectedSOPClassUID": sop_class, "CommandField": 0x0001, "Priority": 0,
        "CommandDataSetType": 0x0000, "AffectedSOPInstanceUID": sop_instance,
    }
    if message_id is not None:
        elements["MessageID"] = message_id
    return command_set(**elements)


def dataset_bytes(ds: Dataset, *, implicit: bool) -> bytes:
    """A data set encoded little endian, implicit or explicit VR (whatever the context)."""
    data = encode(ds, implicit, True)
    assert data is not None
    return data


def read_exactly(sock: socket.socket, count: int) -> bytes:
    """``count`` bytes, or fewer if the peer closed."""
    chunks = bytearray()
    while len(chunks) < count:
        chunk = sock.recv(count - len(chunks))
        if not chunk:
            break
        chunks += chunk
    return bytes(chunks)


def read_pdu(sock: socket.socket) -> tuple[int, bytes] | None:
    """The next PDU as (type, body); None if the connection closed."""
    header = read_exactly(sock, 6)
    if len(header) < 6:
        return None
    kind, _reserved, length = struct.unpack(">BBI", header)
    return kind, read_exactly(sock, length)


@dataclass
class RawAssociation:
    """An association negotiated over a raw socket; ``accepted`` maps context ID to syntax."""

    sock: socket.socket
    accepted: dict[int, str] = field(default_factory=dict)

    @classmethod
    def open(cls, port: int, contexts: list[Context], timeout: float = 20.0) -> RawAssociation:
        """Connect and negotiate; AssertionError unless the agent accepts."""
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        sock.sendall(associate_rq(contexts))
        answer = read_pdu(sock)
        assert answer is not None and answer[0] == ASSOCIATE_AC, f"not accepted: {answer!r}"
        return cls(sock, _accepted_contexts(answer[1]))

    def send_store(self, context_id: int, command: bytes, data: bytes) -> None:
        """Send a command set and a data set, each as one last fragment."""
        self.sock.sendall(p_data(context_id, 3, command) + p_data(context_id, 2, data))

    def read_status(self) -> int | None:
        """The Status of the next response; None if the agent aborted or closed instead."""
        command = bytearray()
        while True:
            answer = read_pdu(self.sock)
            if answer is None or answer[0] != P_DATA:
                return None
            body = answer[1]
            length = struct.unpack(">I", body[:4])[0]
            control = body[5]
            command += body[6 : 4 + length]
            if control & 1 and control & 2:
                break
        return int(decode(io.BytesIO(bytes(command)), True, True).Status)

    def release(self) -> int | None:
        """A-RELEASE-RQ; the type of the PDU that came back (None: closed)."""
        self.sock.sendall(pdu(RELEASE_RQ, bytes(4)))
        answer = read_pdu(self.sock)
        return None if answer is None else answer[0]

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


def _accepted_contexts(body: bytes) -> dict[int, str]:
    """Context ID -> transfer syntax for every accepted context of an A-ASSOCIATE-AC."""
    accepted: dict[int, str] = {}
    offset = 68
    while offset + 4 <= len(body):
        kind, _reserved, length = struct.unpack(">BBH", body[offset : offset + 4])
        value = body[offset + 4 : offset + 4 + length]
        if kind == 0x21 and value[2] == 0:
            syntax = value[4 + 4 : 4 + 4 + struct.unpack(">H", value[6:8])[0]]
            accepted[value[0]] = syntax.decode().rstrip("\0")
        offset += 4 + length
    return accepted
