"""Reading a stored or incoming file's header and turning it into an index record."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset

from agent.archive.index import InstanceRecord
from agent.archive.keys import KEYS, as_text, extract
from agent.archive.layout import Layout, require_uid
from agent.errors import StoreError


def read_header(path: Path) -> Dataset:
    """Parse everything before the pixel data; StoreError 0xC000 if it is not DICOM."""
    try:
        ds = dcmread(path, stop_before_pixels=True, defer_size="64 KB")
        _ = ds.file_meta.TransferSyntaxUID
    except Exception as exc:  # pydicom raises many kinds for bad input
        raise StoreError(0xC000, f"cannot parse the data set: {exc}") from None
    return ds


def timestamp(moment: dt.datetime | None = None) -> str:
    """An arrival time as the index stores it: UTC, ISO 8601, to the second."""
    moment = moment or dt.datetime.now(dt.timezone.utc)
    return moment.astimezone(dt.timezone.utc).isoformat(timespec="seconds")


def instance_path(layout: Layout, ds: Dataset) -> Path:
    """Where this header's instance belongs; StoreError 0xC000 for a missing or bad UID."""
    return layout.instance_path(
        require_uid(ds.get("StudyInstanceUID"), "Study Instance UID"),
        require_uid(ds.get("SeriesInstanceUID"), "Series Instance UID"),
        require_uid(ds.get("SOPInstanceUID"), "SOP Instance UID"),
    )


def build_record(
    ds: Dataset, *, path: str, size: int, calling_ae: str, received_at: str
) -> InstanceRecord:
    """The index record for a parsed header; StoreError 0xC000 if its values cannot decode."""
    try:
        levels = {level: extract(ds, level) for level in KEYS}
        charset = as_text(ds.get("SpecificCharacterSet", ""))
    except Exception as exc:  # undecodable values in a sender's data set
        raise StoreError(0xC000, f"cannot decode the data set's values: {exc}") from None
    return InstanceRecord(
        levels=levels,
        path=path,
        size=size,
        transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
        calling_ae=calling_ae,
        received_at=received_at,
        charset=charset,
    )
