"""Check that a received file holds together, from its first tag to its last byte.

A C-STORE is answered Success only for a data set whose every element header, length,
sequence, item and encapsulated fragment fits exactly in the bytes that arrived, and
whose encoding matches the transfer syntax it was sent under (an implicit VR data set on
an explicit VR context is refused, not relabelled). Values are never decoded and never
read: the walk seeks past them, so a 1 GB instance costs a few hundred small reads.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

from pydicom.datadict import dictionary_VR

from agent.dicom.status import CANNOT_UNDERSTAND, OUT_OF_RESOURCES
from agent.errors import StoreError

UNDEFINED = 0xFFFFFFFF
MAX_DEPTH = 32  # nested sequences; real data sets rarely pass 5
PREAMBLE = 132  # 128 bytes of preamble, then "DICM"

ITEM = (0xFFFE, 0xE000)
ITEM_END = (0xFFFE, 0xE00D)
SEQUENCE_END = (0xFFFE, 0xE0DD)
PIXEL_DATA = (0x7FE0, 0x0010)

_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_SHORT_VRS = frozenset(
    {
        b"AE",
        b"AS",
        b"AT",
        b"CS",
        b"DA",
        b"DS",
        b"DT",
        b"FD",
        b"FL",
        b"IS",
        b"LO",
        b"LT",
        b"PN",
        b"SH",
        b"SL",
        b"SS",
        b"ST",
        b"TM",
        b"UI",
        b"UL",
        b"US",
    }
)
_IMPLICIT = "1.2.840.10008.1.2"
_BIG_ENDIAN = "1.2.840.10008.1.2.2"
_DEFLATED = frozenset({"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1"})


class Malformed(Exception):
    """The bytes do not form a data set; the message says where and why."""


@dataclass(frozen=True)
class Encoding:
    """How element headers are written: VR explicit or not, byte order."""

    explicit: bool
    little: bool

    @property
    def order(self) -> str:
        """The struct byte-order prefix."""
        return "<" if self.little else ">"


EXPLICIT_LE = Encoding(explicit=True, little=True)
IMPLICIT_LE = Encoding(explicit=False, little=True)


def check_file(path: Path) -> int:
    """Where the pixel data (or the end) of a well-formed Part 10 file begins.

    StoreError 0xC000 unless every element of ``path`` holds together.
    """
    try:
        with path.open("rb", buffering=0) as handle:
            walker = _Walker(handle.fileno(), os.fstat(handle.fileno()).st_size)
            walker.walk_file()
            return walker.size if walker.header_end is None else walker.header_end
    except Malformed as exc:
        raise StoreError(CANNOT_UNDERSTAND, f"the data set does not hold together: {exc}") from None
    except OSError as exc:
        reason = f"cannot read the received data set: {exc.strerror}"
        raise StoreError(OUT_OF_RESOURCES, reason) from None


def encoding_of(transfer_syntax: str) -> Encoding:
    """The element encoding a transfer syntax prescribes; deflated ones are refused."""
    if transfer_syntax in _DEFLATED:
        raise Malformed(f"deflated transfer syntax {transfer_syntax} is not accepted")
    if transfer_syntax == _IMPLICIT:
        return IMPLICIT_LE
    return Encoding(explicit=True, little=transfer_syntax != _BIG_ENDIAN)


BLOCK = 64 * 1024  # bytes read at a time: a header is one read, a skipped value none


class _Walker:
    """Reads element headers and skips values, checking every length against its bound.

    The position is kept here and blocks are read with pread: a file object's seek and
    tell each cost a system call, which was 250 of them per instance.
    """

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self.position = 0
        self.header_end: int | None = None
        self._block = b""
        self._block_start = 0

    def walk_file(self) -> None:
        """Preamble, file meta (explicit VR little endian), then the data set to EOF."""
        if self.size < PREAMBLE or self._read(PREAMBLE, self.size)[128:] != b"DICM":
            raise Malformed("no DICM prefix")
        syntax = self._file_meta()
        self._dataset(encoding_of(syntax), self.size, depth=0, in_item=False)

    def _file_meta(self) -> str:
        syntax = ""
        while self._tell() < self.size:
            start = self._tell()
            group = struct.unpack("<H", self._read(2, self.size))[0]
            if group != 0x0002:
                self.position = start
                break
            self.position = start
            tag, length, _vr = self._header(EXPLICIT_LE, self.size)
            if tag == (0x0002, 0x0010) and length != UNDEFINED:
                syntax = self._read(length, self.size).rstrip(b"\0 ").decode("ascii", "replace")
            else:
                self._skip(length, self.size, tag)
        if not syntax:
            raise Malformed("the file meta has no transfer syntax")
        return syntax

    def _dataset(self, enc: Encoding, end: int, depth: int, in_item: bool) -> None:
        """Elements up to ``end``, or up to an item delimiter when ``in_item`` and undefined."""
        if depth > MAX_DEPTH:
            raise Malformed(f"sequences nested deeper than {MAX_DEPTH}")
        while self._tell() < end:
            start = self._tell()
            tag, length, vr = self._header(enc, end)
            if depth == 0 and tag >= PIXEL_DATA and self.header_end is None:
                self.header_end = start  # where the image begins: what read_header needs
            if tag == ITEM_END:
                if in_item:
                    return
                raise Malformed("item delimiter outside an item")
            if tag in (ITEM, SEQUENCE_END):
                raise Malformed(f"unexpected delimiter ({tag[0]:04X},{tag[1]:04X})")
            self._value(enc, tag, vr, length, end, depth)
        if in_item and end == self.size:
            raise Malformed("the data set ends inside an item of undefined length")

    def _value(
        self, enc: Encoding, tag: tuple[int, int], vr: bytes, length: int, end: int, depth: int
    ) -> None:
        if length != UNDEFINED:
            if vr == b"SQ" or (not enc.explicit and _dictionary_vr(tag) == "SQ"):
                self._sequence(enc, self._tell() + self._bounded(length, end, tag), depth)
            else:
                self._skip(length, end, tag)
        elif tag == PIXEL_DATA and vr in (b"OB", b"OW"):
            self._fragments(enc, end)
        elif vr == b"UN":  # an undefined-length UN holds an implicit VR little endian sequence
            self._sequence(IMPLICIT_LE, end, depth, undefined=True)
        elif vr == b"SQ" or not enc.explicit:
            self._sequence(enc, end, depth, undefined=True)
        else:
            raise Malformed(f"undefined length for VR {vr.decode('latin-1')} at {_name(tag)}")

    def _sequence(self, enc: Encoding, end: int, depth: int, undefined: bool = False) -> None:
        """Items until ``end`` (defined length) or until the sequence delimiter."""
        while self._tell() < end:
            tag, length, _vr = self._header(enc, end, delimiter=True)
            if tag == SEQUENCE_END and undefined:
                return
            if tag != ITEM:
                raise Malformed(f"{_name(tag)} where a sequence item was expected")
            if length == UNDEFINED:
                self._dataset(enc, end, depth + 1, in_item=True)
            else:
                self._dataset(
                    enc, self._tell() + self._bounded(length, end, tag), depth + 1, in_item=False
                )
        if undefined:
            raise Malformed("a sequence of undefined length has no delimiter")

    def _fragments(self, enc: Encoding, end: int) -> None:
        """Encapsulated pixel data: the offset table and fragments, then the delimiter."""
        while self._tell() < end:
            tag, length, _vr = self._header(enc, end, delimiter=True)
            if tag == SEQUENCE_END:
                return
            if tag != ITEM or length == UNDEFINED:
                raise Malformed("encapsulated pixel data holds something other than fragments")
            self._skip(length, end, tag)
        raise Malformed("encapsulated pixel data has no sequence delimiter")

    def _header(
        self, enc: Encoding, end: int, delimiter: bool = False
    ) -> tuple[tuple[int, int], int, bytes]:
        """One element header: (tag, length, VR); delimiters and items have no VR."""
        group, element = struct.unpack(enc.order + "HH", self._read(4, end))
        tag = (group, element)
        if group == 0xFFFE:
            return tag, struct.unpack(enc.order + "L", self._read(4, end))[0], b""
        if delimiter:
            raise Malformed(f"{_name(tag)} where a sequence item was expected")
        if not enc.explicit:
            return tag, struct.unpack(enc.order + "L", self._read(4, end))[0], b""
        vr = self._read(2, end)
        if vr in _SHORT_VRS:
            return tag, struct.unpack(enc.order + "H", self._read(2, end))[0], vr
        if vr in _LONG_VRS:
            return tag, struct.unpack(enc.order + "2xL", self._read(6, end))[0], vr
        raise Malformed(f"{_name(tag)} has no valid VR: not encoded as its transfer syntax says")

    def _bounded(self, length: int, end: int, tag: tuple[int, int]) -> int:
        if length > end - self._tell():
            raise Malformed(
                f"{_name(tag)} claims {length} bytes but only {end - self._tell()} remain"
            )
        return length

    def _skip(self, length: int, end: int, tag: tuple[int, int]) -> None:
        self.position += self._bounded(length, end, tag)

    def _read(self, count: int, end: int) -> bytes:
        if count > end - self._tell():
            raise Malformed(f"cut off at byte {self._tell()} (needed {count} more)")
        offset = self.position - self._block_start
        if offset < 0 or offset + count > len(self._block):
            self._block = os.pread(self.fd, max(count, BLOCK), self.position)
            self._block_start, offset = self.position, 0
        data = self._block[offset : offset + count]
        self.position += len(data)
        if len(data) != count:
            raise Malformed(f"cut off at byte {self._tell()}")
        return data

    def _tell(self) -> int:
        return self.position


def _dictionary_vr(tag: tuple[int, int]) -> str:
    try:
        return str(dictionary_VR((tag[0] << 16) | tag[1]))
    except KeyError:
        return ""


def _name(tag: tuple[int, int]) -> str:
    return f"({tag[0]:04X},{tag[1]:04X})"
