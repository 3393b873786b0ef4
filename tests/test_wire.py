"""Element headers read and written by agent/dicom/wire.py, checked against pydicom's writer."""

from __future__ import annotations

from typing import Any, NamedTuple

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_dataset
from pydicom.sequence import Sequence
from pydicom.valuerep import EXPLICIT_VR_LENGTH_16, EXPLICIT_VR_LENGTH_32

from agent.dicom.wire import (
    EXPLICIT_BE,
    EXPLICIT_LE,
    IMPLICIT_LE,
    LONG_LENGTH_VRS,
    SHORT_LENGTH_VRS,
    UNDEFINED_LENGTH,
    Encoding,
    encode_header,
    read_header,
)

ENCODINGS = {"explicit-le": EXPLICIT_LE, "implicit-le": IMPLICIT_LE, "explicit-be": EXPLICIT_BE}
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PRIVATE_TAG = 0x00091010

# a value of every VR, as pydicom takes it (a sequence's is made in the test)
VALUES: dict[str, Any] = {
    "AE": "STORESCP", "AS": "035Y", "AT": 0x00100010, "CS": "ORIGINAL", "DA": "20240101",
    "DS": "1.5", "DT": "20240101120000", "FD": 1.5, "FL": 1.5, "IS": "12", "LO": "a long string",
    "LT": "long text", "OB": b"\x01\x02", "OD": bytes(8), "OF": bytes(4), "OL": bytes(4),
    "OV": bytes(8), "OW": b"\x00\x01", "PN": "Doe^John", "SH": "short", "SL": -1,
    "SQ": None, "SS": -1, "ST": "short text", "SV": -1, "TM": "120000", "UC": "unlimited",
    "UI": "1.2.3", "UL": 7, "UN": b"\x01\x02", "UR": "http://example.org/", "US": 7,
    "UT": "unlimited text", "UV": 7,
}  # fmt: skip
# the file's own encoding only: encapsulated pixel data is explicit VR little endian
TEST_FILES = {
    "CT_small.dcm": ENCODINGS,
    "MR_small_bigendian.dcm": ENCODINGS,
    "MR_small_implicit.dcm": ENCODINGS,
    "rtplan.dcm": ENCODINGS,  # nested sequences
    "test-SR.dcm": ENCODINGS,  # sequences nested deep
    "nested_priv_SQ.dcm": ENCODINGS,
    "UN_sequence.dcm": ENCODINGS,
    "waveform_ecg.dcm": ENCODINGS,
    "JPEG2000.dcm": {"explicit-le": EXPLICIT_LE},
    "SC_rgb_rle_2frame.dcm": {"explicit-le": EXPLICIT_LE},
}


def _written(encoding: Encoding, element: DataElement | None = None, ds: Any = None) -> bytes:
    """What pydicom's writer makes of an element or a data set in ``encoding``."""
    fp = DicomBytesIO()
    fp.is_little_endian = encoding.little
    fp.is_implicit_VR = not encoding.explicit
    if element is not None:
        write_data_element(fp, element)
    else:
        write_dataset(fp, ds)
    return bytes(fp.getvalue())


class Header(NamedTuple):
    """read_header's tuple, its fields named for the tests."""

    tag: int
    vr: bytes | None
    length: int
    size: int


def _header(data: bytes, position: int, encoding: Encoding) -> Header:
    header = read_header(data, position, encoding)
    assert header is not None, f"no header at {position}"
    return Header(*header)


def _passed(data: bytes, position: int, encoding: Encoding) -> tuple[Header, int]:
    """An element's header and where the element ends, passing undefined lengths the way
    PS3.5 7.5 says: items up to the sequence delimiter, each item's elements up to its own."""
    header = _header(data, position, encoding)
    position += header.size
    if header.length != UNDEFINED_LENGTH:
        return header, position + header.length
    inner = IMPLICIT_LE if header.vr == b"UN" else encoding  # PS3.5 6.2.2
    while (item := _header(data, position, inner)).tag != SEQUENCE_END:
        assert item.tag == ITEM and item.vr is None and item.size == 8
        position += item.size
        if item.length != UNDEFINED_LENGTH:
            position += item.length
            continue
        while (element := _header(data, position, inner)).tag != ITEM_END:
            _element, position = _passed(data, position, inner)
        position += element.size
    return header, position + item.size


def test_the_length_rules_are_pydicoms() -> None:
    assert {vr.decode() for vr in LONG_LENGTH_VRS} == {str(vr) for vr in EXPLICIT_VR_LENGTH_32}
    assert {vr.decode() for vr in SHORT_LENGTH_VRS} == {str(vr) for vr in EXPLICIT_VR_LENGTH_16}
    assert set(VALUES) == {vr.decode() for vr in LONG_LENGTH_VRS | SHORT_LENGTH_VRS}


@pytest.mark.parametrize("name", ENCODINGS)
@pytest.mark.parametrize("vr", sorted(VALUES))
def test_every_vr_is_read_as_pydicom_writes_it(vr: str, name: str) -> None:
    encoding = ENCODINGS[name]
    value = Sequence([Dataset()]) if vr == "SQ" else VALUES.get(vr)
    data = _written(encoding, DataElement(PRIVATE_TAG, vr, value))
    header = _header(data, 0, encoding)
    long = encoding.explicit and vr.encode() in LONG_LENGTH_VRS
    assert header == (
        PRIVATE_TAG,
        vr.encode() if encoding.explicit else None,
        len(data) - header.size,
        12 if long else 8,
    )
    assert header.length > 0
    assert encode_header(PRIVATE_TAG, header.length, header.vr, encoding) == data[: header.size]


@pytest.mark.parametrize("name", ENCODINGS)
@pytest.mark.parametrize("vr", ["OB", "US"])
def test_a_header_read_at_a_position_and_before_an_end(vr: str, name: str) -> None:
    encoding = ENCODINGS[name]
    data = _written(encoding, DataElement(PRIVATE_TAG, vr, VALUES[vr]))
    size = _header(data, 0, encoding).size
    padded = b"\xee" * 5 + data
    assert read_header(padded, 5, encoding) == read_header(data, 0, encoding)
    assert read_header(memoryview(padded), 5, encoding) == read_header(data, 0, encoding)
    assert read_header(padded, 5, encoding, end=5 + size) is not None
    for cut in range(size):
        assert read_header(data[:cut], 0, encoding) is None, cut
        assert read_header(padded, 5, encoding, end=5 + cut) is None, cut
    assert read_header(data[:size], 0, encoding, end=len(data) + 100) is not None
    assert read_header(data[: size - 1], 0, encoding, end=len(data) + 100) is None


@pytest.mark.parametrize("name", ENCODINGS)
def test_undefined_lengths_items_and_delimiters(name: str) -> None:
    encoding = ENCODINGS[name]
    inner = Dataset()
    inner.CodeValue = "T-D3000"
    ds = Dataset()
    ds.ContentSequence = Sequence([inner, Dataset()])
    ds["ContentSequence"].is_undefined_length = True
    ds.ContentSequence[0].is_undefined_length_sequence_item = True
    data = _written(encoding, ds=ds)
    sequence = _header(data, 0, encoding)
    assert sequence.tag == 0x0040A730 and sequence.length == UNDEFINED_LENGTH
    assert sequence.vr == (b"SQ" if encoding.explicit else None)
    item = _header(data, sequence.size, encoding)  # no VR, a 4-byte length, in every encoding
    assert (item.tag, item.vr, item.length, item.size) == (ITEM, None, UNDEFINED_LENGTH, 8)
    assert data[-8:] == encode_header(SEQUENCE_END, 0, encoding=encoding)
    assert _header(data, len(data) - 8, encoding) == (SEQUENCE_END, None, 0, 8)
    assert _passed(data, 0, encoding)[1] == len(data)
    start = len(data) - 16  # the empty item of defined length before the delimiter
    assert _header(data, start, encoding) == (ITEM, None, 0, 8)
    assert encode_header(ITEM, 0, encoding=encoding) == data[start : start + 8]
    assert encode_header(ITEM, UNDEFINED_LENGTH, encoding=encoding) == data[
        sequence.size : sequence.size + 8
    ]


def test_encapsulated_pixel_data_has_an_undefined_length() -> None:
    ds = Dataset()
    ds.PixelData = encapsulate([b"\xff\xd8" + bytes(100) + b"\xff\xd9"] * 3, has_bot=True)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    data = _written(EXPLICIT_LE, ds=ds)
    assert _header(data, 0, EXPLICIT_LE) == (0x7FE00010, b"OB", UNDEFINED_LENGTH, 12)
    assert _passed(data, 0, EXPLICIT_LE)[1] == len(data)


@pytest.mark.parametrize(
    ("file", "name"), [(file, name) for file, names in TEST_FILES.items() for name in names]
)
def test_real_data_sets_are_walked_element_by_element(file: str, name: str) -> None:
    found = get_testdata_file(file, download=False)
    if found is None:
        pytest.skip(f"pydicom's test file {file} is not installed")
    ds = dcmread(str(found))
    encoding = ENCODINGS[name]
    data = _written(encoding, ds=ds)
    tags, position = [], 0
    while position < len(data):
        header, position = _passed(data, position, encoding)
        tags.append(header.tag)
    assert position == len(data)
    assert tags == [int(element.tag) for element in ds]


def test_an_explicit_header_needs_a_vr_that_can_hold_its_length() -> None:
    with pytest.raises(ValueError, match="needs its VR"):
        encode_header(PRIVATE_TAG, 2, encoding=EXPLICIT_LE)
    with pytest.raises(ValueError, match="2-byte length"):
        encode_header(PRIVATE_TAG, 0x10000, b"LO", EXPLICIT_LE)
    assert encode_header(PRIVATE_TAG, 0x10000, b"UT", EXPLICIT_LE)[4:8] == b"UT\0\0"
    assert encode_header(PRIVATE_TAG, 0x10000, b"LO") == encode_header(PRIVATE_TAG, 0x10000)
