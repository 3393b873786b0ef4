"""Reading a received or stored file's header into what the archive needs of it.

pydicom decodes lazily, so a bad value can surface on first access rather than in
``dcmread``: everything is read here, once, and any failure becomes 0xC000.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset

from agent.archive.index import InstanceRecord
from agent.archive.keys import KEYS, as_text, extract
from agent.dicom.models import Level
from agent.dicom.status import CANNOT_UNDERSTAND
from agent.errors import StoreError


@dataclass(frozen=True)
class Header:
    """The attributes of one instance that the archive files and indexes it by."""

    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax: str
    charset: str
    levels: Mapping[Level, Mapping[str, str | None]]
    dataset: Dataset = field(compare=False, repr=False, default_factory=Dataset)
    source_ae: str = ""  # who sent it, from the file meta (0002,0016); "" if not written

    def record(self, *, path: str, size: int, calling_ae: str, received_at: str) -> InstanceRecord:
        """The index record for this instance stored at ``path``."""
        return InstanceRecord(
            levels=self.levels,
            path=path,
            size=size,
            transfer_syntax=self.transfer_syntax,
            calling_ae=calling_ae,
            received_at=received_at,
            charset=self.charset,
        )


MAX_HEAD_BYTES = 16 * 1024 * 1024  # a header read into memory at once; larger: from the file


def _parse(path: Path, header_end: int | None) -> Dataset:
    """The header; in one read when its end is known (pydicom reading the file itself
    seeks and tells around every element: some 50 system calls per instance)."""
    if header_end is None or header_end > MAX_HEAD_BYTES:
        return dcmread(path, stop_before_pixels=True, defer_size="64 KB")
    with path.open("rb", buffering=0) as handle:
        head = handle.read(header_end)
    return dcmread(BytesIO(head), stop_before_pixels=True)


def read_header(path: Path, header_end: int | None = None) -> Header:
    """Parse everything before the pixel data; StoreError 0xC000 if it cannot be understood.

    ``header_end``: where the pixel data starts, if known (structure.check_file says).
    """
    try:
        ds = _parse(path, header_end)
        levels = {level: extract(ds, level) for level in KEYS}
        return Header(
            sop_class_uid=as_text(ds.get("SOPClassUID", "")),
            sop_instance_uid=as_text(ds.get("SOPInstanceUID", "")),
            study_uid=as_text(ds.get("StudyInstanceUID", "")),
            series_uid=as_text(ds.get("SeriesInstanceUID", "")),
            transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
            charset=as_text(ds.get("SpecificCharacterSet", "")),
            levels=levels,
            dataset=ds,
            source_ae=source_ae(ds.file_meta),
        )
    except Exception as exc:  # pydicom raises many kinds for bad input
        raise StoreError(CANNOT_UNDERSTAND, f"cannot parse the data set: {exc}") from None


def source_ae(meta: Dataset) -> str:
    """The sender's AE title the agent wrote into a received file's meta (0002,0016):
    what start-up recovery and a reindex restore as the instance's calling AE."""
    return as_text(meta.get("SourceApplicationEntityTitle", "")).strip()


def timestamp(moment: dt.datetime | None = None) -> str:
    """An arrival time as the index stores it: UTC, ISO 8601, to the second."""
    moment = moment or dt.datetime.now(dt.timezone.utc)
    return moment.astimezone(dt.timezone.utc).isoformat(timespec="seconds")
