"""Where things live under ``data_dir``, and the only place that turns UIDs into paths.

A UID reaches a path only after it has been checked to be digits and dots, at most
64 characters, so nothing a sender puts in a UID can name a file outside the archive.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path, PurePosixPath

from agent.archive import durable
from agent.dicom.status import CANNOT_UNDERSTAND
from agent.errors import StoreError

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
INSTANCE_SUFFIX = ".dcm"


def is_valid_uid(value: object) -> bool:
    """True for a DICOM UID: digits and dots, no empty component, at most 64 characters."""
    return isinstance(value, str) and 0 < len(value) <= 64 and _UID.match(value) is not None


def require_uid(value: object, what: str) -> str:
    """Return ``value`` if it is a valid UID; else raise StoreError 0xC000 naming ``what``."""
    if value is None or value == "":
        raise StoreError(CANNOT_UNDERSTAND, f"{what} is missing")
    if not is_valid_uid(value):
        raise StoreError(CANNOT_UNDERSTAND, f"{what} is not a valid UID")
    return str(value)


@dataclass(frozen=True)
class Layout:
    """The directory layout of one archive."""

    root: Path

    @property
    def archive_dir(self) -> Path:
        """Instances, as archive/<study>/<series>/<sop>.dcm."""
        return self.root / "archive"

    @property
    def tmp_dir(self) -> Path:
        """Incoming data before it is durable; emptied at start-up."""
        return self.root / "tmp"

    @property
    def conflicts_dir(self) -> Path:
        """Instances that reused a known SOP Instance UID with different content."""
        return self.root / "conflicts"

    @property
    def run_dir(self) -> Path:
        """The running agent's lock and published status."""
        return self.root / "run"

    @property
    def index_path(self) -> Path:
        """The SQLite index."""
        return self.root / "index.sqlite"

    def create(self) -> None:
        """Create the directories, each entry made durable: an instance acknowledged
        later is only as safe as every directory on its path."""
        for directory in (self.archive_dir, self.tmp_dir, self.conflicts_dir, self.run_dir):
            durable.make_dirs(directory, Path(directory.anchor))

    def instance_path(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        """Path of an instance; every UID is validated before it becomes a path part."""
        parts = (
            require_uid(study_uid, "Study Instance UID"),
            require_uid(series_uid, "Series Instance UID"),
            require_uid(sop_uid, "SOP Instance UID") + INSTANCE_SUFFIX,
        )
        return self.archive_dir.joinpath(*parts)

    def conflict_path(self, sop_uid: str, stamp: int) -> Path:
        """Path for a conflicting copy of ``sop_uid`` received at ``stamp`` (ns)."""
        return self.conflicts_dir / f"{require_uid(sop_uid, 'SOP Instance UID')}.{stamp}.dcm"

    def relative(self, path: Path) -> str:
        """The path as stored in the index: relative to the root, POSIX separators."""
        return path.relative_to(self.root).as_posix()

    def absolute(self, stored: str) -> Path:
        """Inverse of ``relative``; refuses anything that would leave the root.

        Checked by its parts, not by resolving it on disk: that cost a system call per
        path component for every instance a C-MOVE or C-GET sent.
        """
        parts = PurePosixPath(stored).parts
        if not parts or stored.startswith("/") or ".." in parts:
            raise ValueError(f"indexed path {stored!r} leaves the archive")
        return self._resolved_root.joinpath(*parts)

    @cached_property
    def _resolved_root(self) -> Path:
        return self.root.resolve()
