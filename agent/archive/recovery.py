"""Start-up recovery and rebuilding the index from the files alone.

After a crash the files are the truth for what was durably written: a file that was
renamed into place but not yet indexed (or whose row a power cut took: the index syncs
rows the files can restore only with the next commit that must be durable) is indexed
now, routed by the calling AE its file meta names, and an index row without a file is
dropped loudly.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pydicom.filereader import read_file_meta_info

from agent.archive.archive import Archive
from agent.archive.header import Header, read_header, source_ae, timestamp
from agent.archive.index import InstanceRecord, add_conflict, clear, remove_instances
from agent.archive.layout import INSTANCE_SUFFIX
from agent.dicom.status import CANNOT_UNDERSTAND
from agent.errors import StoreError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recovery:
    """What start-up recovery found and did."""

    temp_files_removed: int
    files_indexed: int
    rows_dropped: int
    files_unreadable: int


def clean_tmp(archive: Archive) -> int:
    """Remove every leftover of an interrupted receive; return how many."""
    removed = 0
    for entry in os.scandir(archive.layout.tmp_dir):
        if entry.is_file(follow_symlinks=False):
            os.unlink(entry.path)
            removed += 1
    return removed


def recover(archive: Archive) -> Recovery:
    """Clean temp files and reconcile the index with the files on disk."""
    removed = clean_tmp(archive)
    on_disk = {archive.layout.relative(path) for path in _instance_files(archive)}
    indexed = archive.index.paths()
    missing = indexed - on_disk
    if missing:
        log.error("%d indexed instances have no file; dropping them from the index", len(missing))
        with archive.index.transaction() as conn:
            remove_instances(conn, missing)
    added, unreadable = _index_files(archive, sorted(on_disk - indexed))
    if added:
        log.warning("indexed %d archived files that a crash left unindexed", added)
    return Recovery(removed, added, len(missing), unreadable)


def rebuild(archive: Archive) -> Recovery:
    """Rebuild the index from the archive's files and the conflict copies alone."""
    removed = clean_tmp(archive)
    with archive.index.transaction() as conn:
        clear(conn)
    files = sorted(archive.layout.relative(path) for path in _instance_files(archive))
    added, unreadable = _index_files(archive, files)
    _index_conflicts(archive)
    return Recovery(removed, added, 0, unreadable)


def _instance_files(archive: Archive) -> Iterator[Path]:
    for directory, _subdirs, names in os.walk(archive.layout.archive_dir):
        for name in names:
            if name.endswith(INSTANCE_SUFFIX):
                yield Path(directory, name)


def _index_files(archive: Archive, relative_paths: list[str]) -> tuple[int, int]:
    """Index files in batches; return (indexed, unreadable)."""
    added = unreadable = 0
    batch = 500
    for start in range(0, len(relative_paths), batch):
        with archive.index.transaction(synced=False) as conn:  # the files restore them again
            for relative in relative_paths[start : start + batch]:
                found = _record_for(archive, relative)
                if found is None:
                    unreadable += 1
                    continue
                header, record = found
                archive.index_new(conn, record, header.dataset)
                added += 1
    return added, unreadable


def _record_for(archive: Archive, relative: str) -> tuple[Header, InstanceRecord] | None:
    path = archive.layout.absolute(relative)
    try:
        header = read_header(path)
        expected = archive.layout.instance_path(
            header.study_uid, header.series_uid, header.sop_instance_uid
        )
        if archive.layout.relative(expected) != relative:
            raise StoreError(CANNOT_UNDERSTAND, "file name does not match its UIDs")
        record = header.record(
            path=relative,
            size=path.stat().st_size,
            calling_ae=header.source_ae,
            received_at=_mtime(path),
        )
        return header, record
    except (StoreError, OSError) as exc:
        log.error("cannot index %s: %s", relative, exc)
        return None


def _index_conflicts(archive: Archive) -> None:
    with archive.index.transaction() as conn:
        for entry in sorted(os.scandir(archive.layout.conflicts_dir), key=lambda e: e.name):
            sop_uid = entry.name.split(".dcm")[0].rsplit(".", 1)[0]
            path = Path(entry.path)
            relative, size = archive.layout.relative(path), path.stat().st_size
            add_conflict(conn, sop_uid, relative, size, _sender(path), _mtime(path))


def _sender(path: Path) -> str:
    """The calling AE a received file's meta names ("" if none, or unreadable)."""
    try:
        return source_ae(read_file_meta_info(path))
    except Exception:  # pydicom raises many kinds for a bad file; the copy is kept anyway
        return ""


def _mtime(path: Path) -> str:
    return timestamp(dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc))
