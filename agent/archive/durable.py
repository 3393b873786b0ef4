"""Durable file operations: data fsynced, then renamed, then the directory fsynced."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path


def fsync_file(path: Path) -> None:
    """Flush a file's data (and its size) to stable storage."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush a directory, so that renames and new entries in it survive a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path, stop_at: Path) -> None:
    """Create ``path`` and its missing parents below ``stop_at``, each entry made durable."""
    missing: list[Path] = []
    current = path
    while not current.exists() and current != stop_at:
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        try:
            directory.mkdir()
        except FileExistsError:
            continue  # another association created it first: its creator syncs it
        fsync_dir(directory.parent)


def place(source: Path, target: Path, stop_at: Path) -> None:
    """Move an already-fsynced ``source`` to ``target`` and make the rename durable."""
    make_dirs(target.parent, stop_at)
    os.replace(source, target)
    fsync_dir(target.parent)


def remove_quietly(path: Path) -> None:
    """Remove a file if it is there; used on failure paths that must not raise."""
    with contextlib.suppress(OSError):
        path.unlink()


def free_bytes(path: Path) -> int:
    """Bytes available to us on the filesystem holding ``path``."""
    return shutil.disk_usage(path).free
