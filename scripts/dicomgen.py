#!/usr/bin/env python3
"""Synthetic DICOM test data: CT and MR series, multi-frame objects, very large
instances written without holding them in memory, and the compressed samples pydicom
ships. No patient data: every name, ID and UID is made up here.

As a command:  python scripts/dicomgen.py OUTDIR --count 500 --size 512 --modality CT
               [--patient NAME] [--study-uid UID] [--study-date YYYYMMDD]
               [--description TEXT] [--accession NUMBER]
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import struct
import sys
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import uid
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset

SOP_CLASSES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "SC": "1.2.840.10008.5.1.4.1.1.7",
}
_LOW_NIBBLE = bytes(value & 0x0F for value in range(256))
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
MULTIFRAME_SC = "1.2.840.10008.5.1.4.1.1.7.3"  # Multi-frame Grayscale Word SC

COMPRESSED_SAMPLES = (
    "JPEG2000.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_RLE.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "SC_rgb_jpeg_gdcm.dcm",
    "JPGExtended.dcm",
    "examples_ybr_color.dcm",
)


@dataclass
class Study:
    """Patient and study attributes shared by every generated instance of one study."""

    patient_name: str = "DOE^JOHN"
    patient_id: str = "EDGE0001"
    study_uid: str = field(default_factory=uid.generate_uid)
    study_date: str = "20260115"
    study_time: str = "083000"
    accession: str = "ACC0001"
    description: str = "SYNTHETIC STUDY"
    charset: str = "ISO_IR 192"


def _base(study: Study, sop_class: str, series_uid: str, modality: str, number: int) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = study.charset
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uid.generate_uid()
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study.study_uid
    ds.StudyDate = study.study_date
    ds.StudyTime = study.study_time
    ds.AccessionNumber = study.accession
    ds.StudyID = "1"
    ds.StudyDescription = study.description
    ds.ReferringPhysicianName = "REFERRER^ROSE"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 1
    ds.Modality = modality
    ds.InstanceNumber = number
    ds.ContentDate = study.study_date
    ds.ContentTime = study.study_time
    return ds


def noise12(count: int, seed: int) -> bytes:
    """``count`` 16-bit little-endian words of 12-bit noise (0..4095), the same for the
    same seed. Plain ``random`` rather than numpy, so this script runs in the virtual
    environment scripts/run.sh makes, which has only the agent's own dependencies."""
    words = bytearray(random.Random(seed).randbytes(2 * count))
    words[1::2] = words[1::2].translate(_LOW_NIBBLE)  # the high byte of each word
    return bytes(words)


def ramp16(count: int) -> bytes:
    """``count`` 16-bit little-endian words 0, 1, 2 ... wrapping at 65536: a cheap frame."""
    words = array("H", (value & 0xFFFF for value in range(count)))
    if sys.byteorder == "big":
        words.byteswap()
    return words.tobytes()


def _pixels(ds: Dataset, rows: int, cols: int, seed: int) -> None:
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.PixelData = noise12(rows * cols, seed)


def _file_meta(ds: Dataset, syntax: str = uid.ExplicitVRLittleEndian) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = syntax
    ds.file_meta = meta


def series(count: int, *, modality: str = "CT", size: int = 64, study: Study | None = None,
           series_uid: str | None = None) -> Iterator[Dataset]:
    """``count`` single-frame instances of one series, with pixel data of ``size``²."""
    study = study or Study()
    series_uid = series_uid or uid.generate_uid()
    for number in range(1, count + 1):
        ds = _base(study, SOP_CLASSES[modality], series_uid, modality, number)
        _pixels(ds, size, size, seed=number)
        _file_meta(ds)
        yield ds


def write_series(directory: Path, count: int, **kwargs: object) -> list[Path]:
    """Write a series as files named by instance number; return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in series(count, **kwargs):  # type: ignore[arg-type]
        path = directory / f"{int(ds.InstanceNumber):05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def multiframe(path: Path, frames: int = 8, size: int = 64, study: Study | None = None) -> Path:
    """A multi-frame grayscale secondary capture object."""
    ds = _base(study or Study(), MULTIFRAME_SC, uid.generate_uid(), "OT", 1)
    _pixels(ds, size, size * frames, seed=frames)
    ds.Columns = size
    ds.NumberOfFrames = frames
    _file_meta(ds)
    ds.save_as(path, enforce_file_format=True)
    return path


def large_instance(path: Path, size_bytes: int, study: Study | None = None) -> Path:
    """A multi-frame object of about ``size_bytes``, streamed to disk frame by frame."""
    frame_side = 512
    frame_bytes = frame_side * frame_side * 2
    frames = max(1, size_bytes // frame_bytes)
    ds = _base(study or Study(), MULTIFRAME_SC, uid.generate_uid(), "OT", 1)
    ds.Rows = ds.Columns = frame_side
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.NumberOfFrames = frames
    _file_meta(ds)
    ds.save_as(path, enforce_file_format=True)
    frame = ramp16(frame_side * frame_side)
    with path.open("ab") as out:  # (7FE0,0010) OW, explicit VR little endian
        out.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, frames * frame_bytes))
        for _ in range(frames):
            out.write(frame)
    return path


def compressed_samples(directory: Path) -> list[Path]:
    """Copies of pydicom's compressed samples, each given fresh UIDs so they can coexist."""
    from pydicom import dcmread

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in COMPRESSED_SAMPLES:
        source = get_testdata_file(name)
        if source is None:
            continue
        ds = dcmread(source)
        ds.SOPInstanceUID = uid.generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
            if keyword not in ds:
                setattr(ds, keyword, uid.generate_uid())
        target = directory / name
        ds.save_as(target)
        paths.append(target)
    return paths


def dataset_bytes(path: Path) -> bytes:
    """A file's data set without its File Meta group: what travels in a C-STORE."""
    with path.open("rb") as handle:
        head = handle.read(144)
        if head[128:132] != b"DICM" or head[132:136] != b"\x02\x00\x00\x00":
            raise ValueError(f"{path} has no File Meta group length")
        (group_length,) = struct.unpack("<I", head[140:144])
        handle.seek(144 + group_length)
        return handle.read()


def _valid_uid(text: str) -> str:
    """An argparse type: ``text`` if it is a valid UID (digits and dots, at most 64)."""
    if len(text) > 64 or not uid.RE_VALID_UID.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid UID")
    return text


def _dicom_date(text: str) -> dt.date:
    """An argparse type: a DICOM date, YYYYMMDD."""
    try:
        return dt.datetime.strptime(text, "%Y%m%d").date()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYYMMDD)") from None


def main() -> None:
    """Command line: write one synthetic series."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--size", type=int, default=512, help="rows and columns")
    parser.add_argument("--modality", choices=sorted(SOP_CLASSES), default="CT")
    parser.add_argument("--patient", default="DOE^JOHN")
    parser.add_argument("--study-uid", type=_valid_uid, default=None,
                        help="Study Instance UID (default: a new one), e.g. to retrieve it by")
    parser.add_argument("--study-date", type=_dicom_date, default=dt.date.today(),
                        help="YYYYMMDD (default: today)")
    parser.add_argument("--description", default=Study.description, help="StudyDescription")
    parser.add_argument("--accession", default=Study.accession, help="AccessionNumber")
    args = parser.parse_args()
    study = Study(patient_name=args.patient, study_date=args.study_date.strftime("%Y%m%d"),
                  description=args.description, accession=args.accession)
    if args.study_uid:
        study.study_uid = args.study_uid
    paths = write_series(args.outdir, args.count, modality=args.modality, size=args.size,
                         study=study)
    print(f"wrote {len(paths)} {args.modality} instances to {args.outdir}")


if __name__ == "__main__":
    main()
