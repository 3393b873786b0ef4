"""What a destination gets of each instance: as stored, or compressed for the link as its
``transfer_syntax`` asks (agent/dicom/compression.py), encoded once and kept on disk.

The encoding happens in the destination's sender thread, in the forwarding process, never
on the receive path. It is written under ``<data_dir>/cache/forward/<destination>/``, one
file per instance and syntax, so a retry sends it again without encoding it again; it is
removed once delivered, and the oldest go when the cache outgrows its bound. With
``verify_lossless`` an encoding is decoded and compared with the original before it is
kept: one that does not match falls back to the next choice, as does an instance the
syntax cannot hold (a 32-bit image in JPEG-LS) or this install cannot encode.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from agent.archive.outbox import Job
from agent.config import Peer
from agent.dicom import codecs, compression, transcode
from agent.dicom.codecs import ConversionError
from agent.net.engine import substore
from agent.net.stored import sending

log = logging.getLogger(__name__)

CACHE_BYTES = 2 << 30  # per destination; the oldest encodings go beyond this


class Link:
    """One destination's encodings and what they saved (shared by its lanes)."""

    def __init__(self, directory: Path, workdir: Path, limit: int = CACHE_BYTES) -> None:
        self.directory = directory
        self.workdir = workdir  # where a decompressed copy for the peer is written
        self.limit = limit
        self.stored_bytes = 0  # of the instances sent encoded: their stored size...
        self.encoded_bytes = 0  # ...and what went instead
        self.encodings = 0  # encodings made (a retry makes none)
        self._lock = threading.Lock()
        if directory.is_dir():  # encodings cut short by a stop, or never verified
            for pattern in ("*.part", "*.new"):
                for unfinished in directory.glob(pattern):
                    unfinished.unlink(missing_ok=True)

    @contextmanager
    def prepared(
        self, assoc: Any, peer: Peer, job: Job, path: Path, variant: str = ""
    ) -> Iterator[Path | Dataset]:
        """What to send of ``job``'s instance on ``assoc``: the first of ``peer``'s choices
        the destination accepted and the instance could be encoded in, else as stored (or
        decompressed, for a peer taking none of its stored syntax). ``path`` may be a
        changed copy (agent/outgoing) rather than the archived file: ``variant`` then names
        the change, so that an encoding made before a reload changed it is not reused."""
        encoded = self._encoded_for(assoc, peer, job, path, variant)
        if encoded is not None:
            yield encoded
            return
        with sending(assoc, job.sop_class_uid, job.transfer_syntax, path, self.workdir) as sent:
            yield sent

    def _encoded_for(
        self, assoc: Any, peer: Peer, job: Job, path: Path, variant: str
    ) -> Path | None:
        if not path.is_file():
            return None  # sending() says so
        for target in compression.targets(peer.transfer_syntax, job.transfer_syntax):
            if not substore.has_context(assoc, job.sop_class_uid, target):
                continue
            if target == job.transfer_syntax:
                return None  # as stored
            try:
                return self.encoded(job, path, target, peer.verify_lossless, variant)
            except ConversionError as exc:
                log.info("instance %s goes to %s not as %s: %s", job.sop_instance_uid,
                         peer.name, codecs.name(target), exc)
        return None

    def for_web(self, peer: Peer, job: Job, path: Path, variant: str = "") -> Path:
        """What a DICOMweb destination gets of ``job``'s instance: the first of ``peer``'s
        choices the instance could be encoded in (STOW-RS negotiates nothing: an archive
        that refuses the syntax says so per instance), else ``path`` as it is."""
        for target in compression.targets(peer.transfer_syntax, job.transfer_syntax):
            if target == job.transfer_syntax:
                return path
            try:
                return self.encoded(job, path, target, peer.verify_lossless, variant)
            except ConversionError as exc:
                log.info("instance %s goes to %s not as %s: %s", job.sop_instance_uid,
                         peer.name, codecs.name(target), exc)
        return path

    def encoded(
        self, job: Job, path: Path, target: str, verify: bool, variant: str = ""
    ) -> Path:
        """The cached encoding of ``job``'s instance (of ``path``, its ``variant``) in
        ``target``, made if missing."""
        # "_" is in no UID: delivered() finds this instance's entries, not those of an
        # instance whose UID extends its own (1.2.3 and 1.2.3.5)
        cached = self.directory / f"{job.sop_instance_uid}_{variant}{target}.dcm"
        if cached.is_file():
            os.utime(cached)  # recently used: evicted last
        else:
            self.directory.mkdir(parents=True, exist_ok=True)
            making = cached.with_name(cached.name + ".new")
            transcode.convert(path, target, making)
            try:
                if verify:
                    transcode.verify(path, making)
                os.replace(making, cached)
            finally:
                making.unlink(missing_ok=True)
            with self._lock:
                self.encodings += 1
            self._evict(keep=cached)
        with self._lock:
            self.stored_bytes += path.stat().st_size
            self.encoded_bytes += cached.stat().st_size
        return cached

    def delivered(self, sop_instance_uid: str) -> None:
        """Forget the encodings of an instance the destination now has."""
        if self.directory.is_dir():
            for entry in self.directory.glob(f"{sop_instance_uid}_*.dcm"):
                entry.unlink(missing_ok=True)

    def _evict(self, keep: Path) -> None:
        """Remove the least recently used encodings until the cache fits its bound."""
        entries = []
        for entry in os.scandir(self.directory):
            if not entry.name.endswith(".dcm"):  # one being made
                continue
            try:
                stat = entry.stat()
            except OSError:
                continue
            entries.append((stat.st_mtime, stat.st_size, Path(entry.path)))
        total = sum(size for _, size, _ in entries)
        for _, size, oldest in sorted(entries, key=lambda e: e[0]):
            if total <= self.limit:
                break
            if oldest != keep:
                oldest.unlink(missing_ok=True)
                total -= size


_made: dict[Path, Link] = {}
_making = threading.Lock()


def link_for(root: Path, name: str, workdir: Path) -> Link:
    """The Link of destination ``name`` of the archive at ``root``: one per process,
    shared by the destination's lanes."""
    directory = root / "cache" / "forward" / name
    with _making:
        if directory not in _made:
            _made[directory] = Link(directory, workdir)
        return _made[directory]
