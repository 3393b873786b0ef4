"""Check that a received file holds together, from its first tag to its last byte.

A C-STORE is answered Success only for a data set whose every element header, length,
sequence, item and encapsulated fragment fits exactly in the bytes that arrived, and
whose encoding matches the transfer syntax it was sent under (an implicit VR data set on
an explicit VR context is refused, not relabelled). Values are never decoded and never
read: the walk seeks past them, so a 1 GB instance costs a few hundred small reads.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydicom.datadict import dictionary_VR

from agent.dicom.status import CANNOT_UNDERSTAND, OUT_OF_RESOURCES
from agent.dicom.wire import (
    EXPLICIT_LE,
    IMPLICIT_LE,
    ITEM_GROUP,
    MAX_HEADER,
    UNDEFINED_LENGTH,
    VRS,
    ElementHeader,
    Encoding,
    read_header,
)
from agent.errors import StoreError

MAX_DEPTH = 32  # nested sequences; real data sets rarely pass 5
PREAMBLE = 132  # 128 bytes of preamble, then "DICM"

ITEM = 0xFFFEE000
ITEM_END = 0xFFFEE00D
SEQUENCE_END = 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010
TRANSFER_SYNTAX = 0x00020010

_IMPLICIT = "1.2.840.10008.1.2"
_BIG_ENDIAN = "1.2.840.10008.1.2.2"
_DEFLATED = frozenset({"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1"})


class Malformed(Exception):
    """The bytes do not form a data set; the message says where and why."""


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
            if self._peek(EXPLICIT_LE, self.size)[0] >> 16 != 0x0002:
                break
            tag, _vr, length, _size = self._header(EXPLICIT_LE, self.size)
            if tag == TRANSFER_SYNTAX and length != UNDEFINED_LENGTH:
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
            tag, vr, length, _size = self._header(enc, end)
            if depth == 0 and tag >= PIXEL_DATA and self.header_end is None:
                self.header_end = start  # where the image begins: what read_header needs
            if tag == ITEM_END:
                if in_item:
                    return
                raise Malformed("item delimiter outside an item")
            if tag in (ITEM, SEQUENCE_END):
                raise Malformed(f"unexpected delimiter {_name(tag)}")
            self._value(enc, tag, vr, length, end, depth)
        if in_item and end == self.size:
            raise Malformed("the data set ends inside an item of undefined length")

    def _value(
        self, enc: Encoding, tag: int, vr: bytes | None, length: int, end: int, depth: int
    ) -> None:
        if length != UNDEFINED_LENGTH:
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
            vr_name = (vr or b"").decode("latin-1")
            raise Malformed(f"undefined length for VR {vr_name} at {_name(tag)}")

    def _sequence(self, enc: Encoding, end: int, depth: int, undefined: bool = False) -> None:
        """Items until ``end`` (defined length) or until the sequence delimiter."""
        while self._tell() < end:
            tag, _vr, length, _size = self._header(enc, end, delimiter=True)
            if tag == SEQUENCE_END and undefined:
                return
            if tag != ITEM:
                raise Malformed(f"{_name(tag)} where a sequence item was expected")
            if length == UNDEFINED_LENGTH:
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
            tag, _vr, length, _size = self._header(enc, end, delimiter=True)
            if tag == SEQUENCE_END:
                return
            if tag != ITEM or length == UNDEFINED_LENGTH:
                raise Malformed("encapsulated pixel data holds something other than fragments")
            self._skip(length, end, tag)
        raise Malformed("encapsulated pixel data has no sequence delimiter")

    def _header(self, enc: Encoding, end: int, delimiter: bool = False) -> ElementHeader:
        """The element header at the position, passed; items and delimiters have no VR."""
        header = self._peek(enc, end)
        tag, vr, _length, size = header
        if tag >> 16 != ITEM_GROUP:
            if delimiter:
                raise Malformed(f"{_name(tag)} where a sequence item was expected")
            if enc.explicit and vr not in VRS:
                raise Malformed(
                    f"{_name(tag)} has no valid VR: not encoded as its transfer syntax says"
                )
        self.position += size
        return header

    def _peek(self, enc: Encoding, end: int) -> ElementHeader:
        """The element header at the position, not passed; Malformed if cut off before ``end``."""
        block, offset, limit = self._window(MAX_HEADER, end)
        header = read_header(block, offset, enc, limit)
        if header is None:
            raise Malformed(
                f"cut off at byte {self._tell()} (an element header, {limit - offset} bytes left)"
            )
        return header

    def _bounded(self, length: int, end: int, tag: int) -> int:
        if length > end - self._tell():
            raise Malformed(
                f"{_name(tag)} claims {length} bytes but only {end - self._tell()} remain"
            )
        return length

    def _skip(self, length: int, end: int, tag: int) -> None:
        self.position += self._bounded(length, end, tag)

    def _read(self, count: int, end: int) -> bytes:
        if count > end - self._tell():
            raise Malformed(f"cut off at byte {self._tell()} (needed {count} more)")
        block, offset, limit = self._window(count, end)
        self.position += limit - offset
        if limit - offset != count:
            raise Malformed(f"cut off at byte {self._tell()}")
        return block[offset:limit]

    def _window(self, count: int, end: int) -> tuple[bytes, int, int]:
        """The block holding the next ``count`` bytes (fewer at ``end`` or at the end of the
        file), where they start in it and where they stop: one pread for many headers."""
        count = max(0, min(count, end - self.position))
        offset = self.position - self._block_start
        if offset < 0 or offset + count > len(self._block):
            self._block = os.pread(self.fd, max(count, BLOCK), self.position)
            self._block_start, offset = self.position, 0
        return self._block, offset, min(offset + count, len(self._block))

    def _tell(self) -> int:
        return self.position


def _dictionary_vr(tag: int) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return ""


def _name(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
