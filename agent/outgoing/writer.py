"""The file a destination receives when its peer changes what goes out (coercion,
de-identification): written beside the archive, never over it.

Only the header is read (pydicom, stopping before the pixel data, large values deferred)
and changed; the new header is written, then the Pixel Data element's bytes are copied
from the archived file as they are (``os.sendfile``, in chunks): a 1 GB multi-frame
costs its header's memory. The copy is written under a temporary name in the data
directory's ``outgoing/<lane>/`` and renamed when whole, so nothing half-changed is ever
sent; each lane keeps only the files of the batch it is sending.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian

from agent.archive.header import source_ae
from agent.dicom.wire import IMPLICIT_LE, UNDEFINED_LENGTH, read_header
from agent.outgoing import keyed
from agent.outgoing.coerce import applies, coerce
from agent.outgoing.deid import Deidentifier, burned_in
from agent.outgoing.settings import Outgoing
from agent.outgoing.splice import encoding_of, splice

WORK_DIR = "outgoing"
DEFER = "64 KB"  # larger values stay in the file until written
CHUNK = 1 << 20
PIXEL_DATA = 0x7FE00010
SEQUENCE_END = 0xFFFEE0DD


class OutgoingError(Exception):
    """The change cannot be made: that instance is not sent to that destination."""


class HeldBack(OutgoingError):
    """The instance must not go to that destination at all (its pixels may show who the
    patient is): no retry would change that, only the site's ``allow_burned_in``."""


@dataclass(frozen=True)
class Prepared:
    """What to send: the archived file itself (``uid`` None) or a changed copy and the
    SOP Instance UID it carries."""

    path: Path
    uid: str | None = None


def digest_of(outgoing: Outgoing | None) -> str:
    """A short name for these settings: what a cache of encoded changed copies is keyed by,
    so that a copy changed under earlier settings is never sent after a reload."""
    text = json.dumps(None if outgoing is None else dataclasses.asdict(outgoing),
                      sort_keys=True, default=_sorted)  # the same text in every process
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _sorted(value: object) -> object:
    """Sets (whose order differs between processes) sorted; anything else as text."""
    if isinstance(value, (set, frozenset)):
        return sorted(map(str, value))
    return str(value)


def needed(outgoing: Outgoing | None) -> bool:
    """Whether a peer with these settings receives changed copies."""
    return outgoing is not None and (
        outgoing.coerce is not None or bool(outgoing.rules) or bool(outgoing.deidentify))


def header(source: BinaryIO) -> tuple[Dataset, int]:
    """The header of the open file ``source`` (large values deferred) and where its Pixel
    Data starts (pydicom stops before it, at the start of its element)."""
    source.seek(0)
    ds = dcmread(source, stop_before_pixels=True, defer_size=DEFER)
    return ds, source.tell()


def changed(outgoing: Outgoing, source: BinaryIO, root: Path,
            key: bytes | None = None) -> tuple[Dataset, int, bool]:
    """The header of the open file ``source`` as the destination receives it, where the
    Pixel Data starts, and whether anything was changed; OutgoingError with the reason
    when it cannot be. ``key``: the secret of replacements, else the data directory's."""
    try:
        ds, pixels = header(source)
    except Exception as exc:  # pydicom raises many kinds for bad input
        raise OutgoingError(f"cannot read the stored header: {exc}") from None
    touched = False
    try:
        for rules in (outgoing.coerce, *outgoing.rules):
            if rules is not None and applies(rules, ds, source_ae(ds.file_meta)):
                coerce(rules, ds)
                touched = True
        if outgoing.deidentify:
            why = burned_in(ds)
            if why and not outgoing.allow_burned_in:
                raise HeldBack(f"held back from a de-identified destination: {why}"
                                    " (allow_burned_in = true sends it)")
            key = key or keyed.secret(root)
            Deidentifier(key, outgoing.deidentify_options).apply(ds)
            touched = True
        if touched:  # group lengths (retired) would no longer be right
            for tag in [int(t) for t in ds.keys() if t & 0xFFFF == 0]:  # noqa: SIM118
                del ds[tag]
    except OutgoingError:
        raise
    except Exception as exc:
        raise OutgoingError(f"cannot change the header: {exc}") from None
    return ds, pixels, touched


def prepare(outgoing: Outgoing | None, archived: Path, root: Path, lane: str,
            *, keep_others: bool = False) -> Prepared:
    """The file to send ``archived`` as, for a peer with ``outgoing`` settings.

    Unchanged peers get the archived file. ``lane`` names the sender's work directory;
    unless ``keep_others``, the files it prepared before are removed first.
    OutgoingError when the instance must not go (the reason in words); OSError when the
    archived file cannot be read or the copy written.
    """
    if outgoing is None or not needed(outgoing):
        return Prepared(archived)
    work = root / WORK_DIR / lane
    work.mkdir(parents=True, exist_ok=True)
    if not keep_others:
        for old in work.iterdir():
            old.unlink(missing_ok=True)
    with archived.open("rb") as source:
        ds, pixels, touched = changed(outgoing, source, root)
        if not touched:
            return Prepared(archived)
        uid = str(ds.get("SOPInstanceUID", "instance"))
        final = work / f"{uid}.dcm"
        partial = work / f".{uid}.part"
        try:
            _write(ds, source, pixels, partial)
        except OSError:
            partial.unlink(missing_ok=True)
            raise
        except Exception as exc:  # pydicom: a value that cannot be encoded
            partial.unlink(missing_ok=True)
            raise OutgoingError(f"cannot write the changed header: {exc}") from None
    os.replace(partial, final)
    return Prepared(final, uid)


def _write(ds: Dataset, source: BinaryIO, pixels: int, partial: Path) -> None:
    """The new header, then the archived Pixel Data element's bytes as they are."""
    syntax = ds.file_meta.TransferSyntaxUID
    if syntax == DeflatedExplicitVRLittleEndian:
        raise OutgoingError("a deflated data set cannot be changed without inflating it whole")
    size = os.fstat(source.fileno()).st_size
    end = _pixel_end(source, pixels, size, syntax) if pixels < size else size
    with partial.open("wb") as out:
        if not splice(ds, source, pixels, out):
            ds.save_as(out, enforce_file_format=True)
        out.flush()
        offset = pixels
        while offset < end:
            sent = os.sendfile(out.fileno(), source.fileno(), offset, min(CHUNK, end - offset))
            if sent == 0:
                raise OSError("the archived file ended early")
            offset += sent


def _pixel_end(source: BinaryIO, start: int, size: int, syntax: str) -> int:
    """Where the Pixel Data element starting at ``start`` ends (what follows it, such as
    trailing padding, is left out)."""
    encoding = encoding_of(syntax)
    head = os.pread(source.fileno(), 12, start)
    found = read_header(head, 0, encoding)
    if found is None or found[0] != PIXEL_DATA:
        return size  # not pixel data (a tag after it stopped the read): copy the rest
    _tag, _vr, length, header = found
    if length != UNDEFINED_LENGTH:
        return min(size, start + header + length)
    position = start + header
    while position + 8 <= size:  # encapsulated: items to the sequence delimiter
        item = read_header(os.pread(source.fileno(), 8, position), 0, IMPLICIT_LE)
        assert item is not None
        position += 8 + (0 if item[0] == SEQUENCE_END else item[2])
        if item[0] == SEQUENCE_END:
            return position
    return size
