"""Limits on what a C-FIND, C-MOVE or C-GET identifier may carry, checked before use.

A query is a few dozen short keys; anything far larger is a broken or hostile peer.
The raw size is checked before pydicom decodes anything, the Specific Character Set
before any text is decoded (pydicom warns once per unknown term and value), and the
shape (keys, sequence depth and items, value lengths) before matching starts. Each
refusal is a QueryError, answered with its status and an Error Comment.
"""

from __future__ import annotations

import re
from typing import Any

from pydicom.charset import python_encoding
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset

from agent.dicom.status import CANNOT_UNDERSTAND
from agent.dicom.wire import UNDEFINED_LENGTH, Encoding, read_header
from agent.errors import QueryError

MAX_IDENTIFIER_BYTES = 256 * 1024  # a list of about 3,900 UIDs
MAX_KEYS = 256  # elements in the identifier or in any one sequence item
MAX_DEPTH = 3  # sequences within sequences
MAX_ITEMS = 16  # items in any one sequence (a query needs one)
MAX_VALUE_BYTES = 16 * 1024  # one value, UID lists aside (bounded by the whole size)
MAX_CHARSET_TERMS = 8
_CHARSET_TAG = 0x00080005


def identifier_of(event: Any) -> Dataset:
    """The request's identifier, decoded only once its size allows; QueryError otherwise."""
    raw = getattr(event.request, "Identifier", None)
    data = raw.getvalue() if raw is not None else b""
    if len(data) > MAX_IDENTIFIER_BYTES:
        raise QueryError(
            CANNOT_UNDERSTAND,
            f"identifier of {len(data)} bytes; the limit is {MAX_IDENTIFIER_BYTES}",
        )
    syntax = event.context.transfer_syntax
    check_charset(raw_charset(data, syntax.is_implicit_VR, syntax.is_little_endian))
    try:
        identifier: Dataset = event.identifier
        check_shape(identifier, depth=0)
    except RecursionError:
        raise QueryError(CANNOT_UNDERSTAND, "identifier nests too deep") from None
    return identifier


def raw_charset(data: bytes, implicit: bool, little: bool) -> bytes | None:
    """The undecoded Specific Character Set value: tags ascend, so it comes first or not at all.

    pydicom converts the character set while it decodes, warning for each unknown term.
    """
    encoding = Encoding(explicit=not implicit, little=little)
    position = 0
    while (header := read_header(data, position, encoding)) is not None:
        tag, _vr, length, size = header
        if tag > _CHARSET_TAG or length == UNDEFINED_LENGTH:
            return None
        start = position + size
        if tag == _CHARSET_TAG:
            return data[start : start + length]
        position = start + length
    return None


def check_charset(value: bytes | None) -> None:
    """At most a few Specific Character Set terms, each one pydicom knows."""
    if not value:
        return
    terms = [t.strip() for t in value.decode("ascii", "replace").split("\\")]
    if len(terms) > MAX_CHARSET_TERMS:
        raise QueryError(
            CANNOT_UNDERSTAND, f"{len(terms)} character set terms; at most {MAX_CHARSET_TERMS}"
        )
    for term in terms:  # an empty term stands for the default repertoire
        if term and _known(term) is None:
            raise QueryError(CANNOT_UNDERSTAND, f"character set {term[:24]!r} is unknown")


def _known(term: str) -> str | None:
    """The term, or the spelling pydicom corrects it to, if pydicom knows it."""
    for spelling in (
        term,
        re.sub(r"^ISO.IR", "ISO_IR", term),
        re.sub(r"^ISO.2022.IR.", "ISO 2022 IR ", term),
    ):
        if spelling in python_encoding:
            return spelling
    return None


def check_shape(dataset: Dataset, *, depth: int) -> None:
    """Keys per item, sequence depth and items, and value lengths, without decoding text."""
    if len(dataset) > MAX_KEYS:
        raise QueryError(CANNOT_UNDERSTAND, f"{len(dataset)} keys in one item; at most {MAX_KEYS}")
    for tag in list(dataset.keys()):
        element = dataset.get_item(tag)
        if element is None:
            continue
        if _vr_of(element, tag) == "SQ":
            _check_sequence(dataset[tag].value, depth)
            continue
        length = len(element.value) if isinstance(element.value, (bytes, str)) else 0
        if length > MAX_VALUE_BYTES and element.VR != "UI":
            raise QueryError(
                CANNOT_UNDERSTAND, f"a value of {length} bytes; the limit is {MAX_VALUE_BYTES}"
            )


def _vr_of(element: Any, tag: int) -> str:
    """The element's VR; for Implicit VR, the data dictionary's (private tags: unknown)."""
    if element.VR:
        return str(element.VR)
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


def _check_sequence(items: Any, depth: int) -> None:
    if depth + 1 > MAX_DEPTH:
        raise QueryError(CANNOT_UNDERSTAND, f"sequences nest deeper than {MAX_DEPTH} levels")
    if len(items) > MAX_ITEMS:
        raise QueryError(CANNOT_UNDERSTAND, f"a sequence of {len(items)} items; at most 16")
    for item in items:
        check_shape(item, depth=depth + 1)
