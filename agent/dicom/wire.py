"""DICOM element headers as they are on the wire: the VR length rules, one reader, one writer.

PS3.5 7.1 gives every data element a header before its value:

- Explicit VR (7.1.2): tag, VR, then a 2-byte length for most VRs (Table 7.1-2), or two
  reserved bytes and a 4-byte length for the VRs of ``LONG_LENGTH_VRS`` (Table 7.1-1):
  8 or 12 bytes.
- Implicit VR (7.1.3): tag, then a 4-byte length: 8 bytes.
- Items and delimiters (group FFFE, 7.5) are written as in Implicit VR in both.

A length of FFFFFFFFH is undefined (7.1.1): the value runs to a delimiter. The byte order
(7.3) applies to the tag's group and element and to the length. Values are the callers'
business: the archive's walk (archive/structure.py), the identifier's character set
(net/bounds.py), a stored file's meta (net/engine/substore.py), C-STORE responses and
command sets (net/engine/responses.py, commands.py) all read and write headers here.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

UNDEFINED_LENGTH = 0xFFFFFFFF  # PS3.5 7.1.1
ITEM_GROUP = 0xFFFE  # items and delimiters: no VR, a 4-byte length (PS3.5 7.5)
MAX_HEADER = 12  # bytes of the longest element header

# explicit VRs with two reserved bytes and a 4-byte length (PS3.5 7.1.2, Table 7.1-1)
LONG_LENGTH_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
# explicit VRs with a 2-byte length (PS3.5 7.1.2, Table 7.1-2)
SHORT_LENGTH_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT PN SH SL SS ST TM UI UL US".split()
)
VRS = LONG_LENGTH_VRS | SHORT_LENGTH_VRS

Buffer = bytes | bytearray | memoryview


class Encoding(NamedTuple):
    """How element headers are written: VR explicit or implicit, little or big endian."""

    explicit: bool
    little: bool


EXPLICIT_LE = Encoding(explicit=True, little=True)
IMPLICIT_LE = Encoding(explicit=False, little=True)  # also every command set (PS3.7 6.3.1)
EXPLICIT_BE = Encoding(explicit=True, little=False)


# One element header: (tag, vr, length, size). The tag is group << 16 | element; ``vr`` is
# None in Implicit VR and for items and delimiters, else the two bytes found, which the
# caller may check against ``VRS`` (an unknown VR is read with a 2-byte length); ``length``
# may be ``UNDEFINED_LENGTH``; ``size`` is the header's own bytes (8 or 12). A plain
# tuple: a NamedTuple cost more to build than reading the header (a walk reads hundreds).
ElementHeader = tuple[int, bytes | None, int, int]


class _Codec:
    """The precompiled structs of one byte order."""

    __slots__ = ("explicit", "implicit", "long_length")

    def __init__(self, order: str) -> None:
        self.implicit = struct.Struct(order + "HHI")  # also items and delimiters
        self.explicit = struct.Struct(order + "HH2sH")  # VR and a 2-byte length
        self.long_length = struct.Struct(order + "I")  # after VR and two reserved bytes


_LITTLE = _Codec("<")
_BIG = _Codec(">")


def read_header(
    data: Buffer, position: int, encoding: Encoding, end: int | None = None
) -> ElementHeader | None:
    """The (tag, vr, length, size) at ``data[position:]``; None if it does not fit before ``end``.

    ``end`` defaults to (and is capped at) the length of ``data``. Nothing is copied but
    the VR's two bytes.
    """
    if end is None or end > len(data):
        end = len(data)
    if position + 8 > end:
        return None
    codec = _LITTLE if encoding.little else _BIG
    if encoding.explicit:
        group, element, vr, length = codec.explicit.unpack_from(data, position)
        if group != ITEM_GROUP:
            if vr not in LONG_LENGTH_VRS:
                return group << 16 | element, vr, length, 8
            if position + 12 > end:
                return None
            (length,) = codec.long_length.unpack_from(data, position + 8)
            return group << 16 | element, vr, length, 12
    group, element, length = codec.implicit.unpack_from(data, position)
    return group << 16 | element, None, length, 8


def encode_header(
    tag: int, length: int, vr: bytes | None = None, encoding: Encoding = IMPLICIT_LE
) -> bytes:
    """The header of an element of ``length`` value bytes (the VR only if explicit).

    ValueError for an explicit header without a VR, or a length its VR cannot hold.
    """
    group, element = tag >> 16, tag & 0xFFFF
    if encoding is IMPLICIT_LE:  # every command element: the short way
        return _LITTLE.implicit.pack(group, element, length)
    codec = _LITTLE if encoding.little else _BIG
    if not encoding.explicit or group == ITEM_GROUP:
        return codec.implicit.pack(group, element, length)
    if vr is None or len(vr) != 2:
        raise ValueError(f"an explicit VR header of ({group:04X},{element:04X}) needs its VR")
    if vr in LONG_LENGTH_VRS:
        return codec.explicit.pack(group, element, vr, 0) + codec.long_length.pack(length)
    if length > 0xFFFF:
        raise ValueError(f"{length} bytes do not fit the 2-byte length of VR {vr!r}")
    return codec.explicit.pack(group, element, vr, length)
