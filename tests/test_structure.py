"""The structural walk that runs before every C-STORE Success (agent/archive/structure.py)."""

from __future__ import annotations

import struct
import time
import tracemalloc
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit

from agent.archive.structure import check_file
from agent.errors import StoreError

WELL_FORMED = [
    "CT_small.dcm",  # explicit VR little endian
    "MR_small_bigendian.dcm",  # explicit VR big endian
    "MR_small_implicit.dcm",
    "rtplan.dcm",  # implicit, nested sequences
    "test-SR.dcm",  # a structured report: sequences nested deep
    "nested_priv_SQ.dcm",  # private sequences in implicit VR
    "UN_sequence.dcm",  # a sequence hidden in an undefined-length UN
    "JPEG2000.dcm",  # encapsulated pixel data
    "MR_small_RLE.dcm",
    "SC_rgb_rle_2frame.dcm",  # several fragments
    "JPEG2000-embedded-sequence-delimiter.dcm",  # a delimiter's bytes inside a fragment
    "waveform_ecg.dcm",
]


def _local(name: str) -> Path:
    found = get_testdata_file(name, download=False)
    if found is None:
        pytest.skip(f"pydicom's test file {name} is not installed")
    return Path(str(found))


def _refused(path: Path) -> str:
    with pytest.raises(StoreError) as raised:
        check_file(path)
    assert raised.value.status == 0xC000
    return str(raised.value)


def _save(ds: Dataset, path: Path, syntax: str = ExplicitVRLittleEndian) -> Path:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("name", WELL_FORMED)
def test_well_formed_files_pass(name: str) -> None:
    check_file(_local(name))


def test_undefined_length_sequences_and_items_pass(tmp_path: Path) -> None:
    inner = Dataset()
    inner.CodeValue = "T-D3000"
    outer = Dataset()
    outer.ConceptNameCodeSequence = Sequence([inner])
    ds = Dataset()
    ds.PatientName = "X"
    ds.ContentSequence = Sequence([outer, Dataset()])
    ds["ContentSequence"].is_undefined_length = True
    for item in ds.ContentSequence:
        item.is_undefined_length_sequence_item = True
    ds.SOPInstanceUID = "1.2.3.4"
    check_file(_save(ds, tmp_path / "sq.dcm"))
    check_file(_save(ds, tmp_path / "sq-implicit.dcm", ImplicitVRLittleEndian))


def test_encapsulated_pixel_data_with_an_offset_table_passes(tmp_path: Path) -> None:
    ds = Dataset()
    ds.SOPInstanceUID = "1.2.3.4"
    ds.PixelData = encapsulate([b"\xff\xd8" + bytes(100) + b"\xff\xd9"] * 3, has_bot=True)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    check_file(_save(ds, tmp_path / "encaps.dcm", JPEGBaseline8Bit))


def test_a_file_cut_inside_its_pixel_data_is_refused(tmp_path: Path) -> None:
    data = _local("CT_small.dcm").read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[:-100])
    assert "claims" in _refused(cut)


def test_a_file_cut_inside_an_element_header_is_refused(tmp_path: Path) -> None:
    data = _local("CT_small.dcm").read_bytes()
    pixel_header = data.index(struct.pack("<HH", 0x7FE0, 0x0010))
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: pixel_header + 5])
    assert "cut off" in _refused(cut)


def test_an_implicit_data_set_labelled_explicit_is_refused(tmp_path: Path) -> None:
    implicit = _local("MR_small_implicit.dcm")
    ds = dcmread(implicit)
    path = tmp_path / "mislabelled.dcm"
    _save(ds, path, ImplicitVRLittleEndian)
    meta_end = _data_set_offset(path)
    explicit = tmp_path / "relabelled.dcm"
    _save(Dataset(), explicit, ExplicitVRLittleEndian)  # an explicit meta, then the implicit body
    head = explicit.read_bytes()[: _data_set_offset(explicit)]
    explicit.write_bytes(head + path.read_bytes()[meta_end:])
    assert "VR" in _refused(explicit)


def test_an_unterminated_sequence_is_refused(tmp_path: Path) -> None:
    path = _save(Dataset(), tmp_path / "open.dcm")
    with path.open("ab") as out:  # (0008,1140) SQ of undefined length, one empty item, no end
        out.write(struct.pack("<HH2sHI", 0x0008, 0x1140, b"SQ", 0, 0xFFFFFFFF))
        out.write(struct.pack("<HHI", 0xFFFE, 0xE000, 0))
    assert "delimiter" in _refused(path)


def test_a_deflated_file_is_refused() -> None:
    assert "deflated" in _refused(_local("image_dfl.dcm"))


def test_a_1_gb_instance_is_walked_without_reading_it(tmp_path: Path) -> None:
    path = _save(Dataset(), tmp_path / "big.dcm")
    size = 1 << 30
    with path.open("ab") as out:
        out.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, size))
        out.truncate(out.tell() + size)  # sparse: no gigabyte is written
    tracemalloc.start()
    started = time.monotonic()
    try:
        check_file(path)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1048576
    assert time.monotonic() - started < 5


def _data_set_offset(path: Path) -> int:
    head = path.read_bytes()[:144]
    return 144 + struct.unpack("<I", head[140:144])[0]
