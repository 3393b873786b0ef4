"""Writing a changed header fast: the elements pydicom never decoded are copied from the
archived file as bytes; only those decoded (read, changed or added) are encoded again.

A coercion touches a handful of a CT header's hundreds of elements, and pydicom writes
each element for some 20 microseconds: encoding only what changed makes the copy cost
the header's read. The element boundaries come from a walk of the stored bytes
(``agent.dicom.wire``), never from decoding values. Anything unusual (no preamble, a
header past MAX_HEADER) returns False, and the caller writes with pydicom whole.
"""

from __future__ import annotations

import os
from typing import BinaryIO

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO, DicomFileLike
from pydicom.filewriter import (
    correct_ambiguous_vr_element,
    write_data_element,
    write_file_meta_info,
)

from agent.dicom.wire import (
    EXPLICIT_BE,
    EXPLICIT_LE,
    IMPLICIT_LE,
    UNDEFINED_LENGTH,
    Encoding,
    read_header,
)

MAX_HEADER = 8 << 20  # bytes of data set before the pixel data walked in memory
PREAMBLE = 132
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
Span = tuple[int, int]  # start, end in the file


def encoding_of(syntax: str) -> Encoding:
    """How the data set's element headers are written."""
    if syntax == "1.2.840.10008.1.2":
        return IMPLICIT_LE
    return EXPLICIT_BE if syntax == "1.2.840.10008.1.2.2" else EXPLICIT_LE


def splice(ds: Dataset, source: BinaryIO, pixels: int, out: BinaryIO) -> bool:
    """Write preamble, ``ds``'s meta and data set (up to ``pixels``) to ``out``; False
    (nothing written) when the file is not one this walk reads."""
    head = os.pread(source.fileno(), min(pixels, PREAMBLE + MAX_HEADER), 0)
    if len(head) < pixels or head[128:132] != b"DICM":
        return False
    start = _meta_end(head)
    encoding = encoding_of(str(ds.file_meta.TransferSyntaxUID))
    stored = _elements(head, start, pixels, encoding)
    if stored is None:
        return False
    out.write(head[:128] + b"DICM")
    meta = DicomFileLike(out)
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    _data_set(ds, head, stored, encoding, out)
    return True


def _meta_end(head: bytes) -> int:
    """Where the file meta group (explicit VR little endian) ends."""
    position = PREAMBLE
    while True:
        found = read_header(head, position, EXPLICIT_LE)
        if found is None or found[0] >> 16 != 0x0002:
            return position
        position += found[3] + found[2]


def _elements(head: bytes, start: int, end: int, encoding: Encoding) -> dict[int, Span] | None:
    """The top-level elements between ``start`` and ``end`` by tag; None if they do not
    fit exactly."""
    found: dict[int, Span] = {}
    position = start
    while position < end:
        header = read_header(head, position, encoding, end)
        if header is None:
            return None
        tag, _vr, length, size = header
        after = (_skip_undefined(head, position + size, end, encoding)
                 if length == UNDEFINED_LENGTH else position + size + length)
        if after is None or after > end:
            return None
        found[tag] = (position, after)
        position = after
    return found


def _skip_undefined(head: bytes, position: int, end: int, encoding: Encoding) -> int | None:
    """The end of an undefined-length value: items up to the sequence delimiter, each item
    defined or up to its own delimiter (elements within walked, however deep)."""
    while position < end:
        item = read_header(head, position, IMPLICIT_LE if encoding.little else encoding, end)
        if item is None:
            return None
        tag, _vr, length, size = item
        position += size
        if tag == SEQUENCE_END:
            return position
        if tag != ITEM:
            return None
        if length != UNDEFINED_LENGTH:
            position += length
            continue
        inner = _item_end(head, position, end, encoding)
        if inner is None:
            return None
        position = inner
    return None


def _item_end(head: bytes, position: int, end: int, encoding: Encoding) -> int | None:
    """The end of an undefined-length item: its elements, then the item delimiter."""
    while position < end:
        header = read_header(head, position, encoding, end)
        if header is None:
            return None
        tag, _vr, length, size = header
        if tag == ITEM_END:
            return position + 8
        if length == UNDEFINED_LENGTH:
            after = _skip_undefined(head, position + size, end, encoding)
            if after is None:
                return None
            position = after
        else:
            position += size + length
    return None


def _data_set(ds: Dataset, head: bytes, stored: dict[int, Span], encoding: Encoding,
              out: BinaryIO) -> None:
    """Each element in tag order: as stored when pydicom never decoded it, else encoded."""
    charset = ds._character_set
    run: list[int] = []  # a stretch of stored bytes to copy in one write

    def flush() -> None:
        if run:
            out.write(head[run[0]:run[1]])
            run.clear()

    for tag in sorted(int(t) for t in ds.keys()):  # noqa: SIM118 (iterating decodes)
        elem = ds.get_item(tag)
        span = stored.get(tag)
        if isinstance(elem, RawDataElement) and span is not None:
            if run and run[1] == span[0]:
                run[1] = span[1]
            else:
                flush()
                run.extend(span)
            continue
        flush()
        buffer = DicomBytesIO()
        buffer.is_little_endian = encoding.little
        buffer.is_implicit_VR = not encoding.explicit
        write_data_element(buffer, correct_ambiguous_vr_element(ds[tag], ds, encoding.little),
                           charset)
        out.write(buffer.getvalue())
    flush()
