"""STOW-RS (PS3.18 10.5): the request body, streamed from the archived files, and the
answer, read per instance.

The body is ``multipart/related; type="application/dicom"``, one part per instance, each
the Part 10 file byte for byte as archived. It is never held in memory: ``body_chunks``
reads each file in 256 KiB chunks while the socket takes them, and its exact length is
known beforehand from the files' sizes (a Content-Length request, which every archive
takes, rather than a chunked one some refuse). It can be iterated again, which a request
sent once more after a 401 needs.
"""

from __future__ import annotations

import email.utils
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHUNK = 256 * 1024
MEDIA_TYPE = "application/dicom"
ANSWER_TYPE = "application/dicom+json"
REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"
WARNING_REASON = "00081196"


@dataclass(frozen=True)
class Part:
    """One instance of a request: its archived file and that file's size."""

    sop_instance_uid: str
    path: Path
    size: int


class StowBody:
    """A request body of known length that reads its files only while it is sent."""

    def __init__(
        self,
        parts: Sequence[Part],
        boundary: str | None = None,
        take: Callable[[int], object] | None = None,
    ) -> None:
        self.parts = tuple(parts)
        self.boundary = boundary or os.urandom(16).hex()
        self.take = take  # called with each chunk's size before it goes: a bandwidth cap
        overhead = len(_part_head(self.boundary)) + 2  # and the CRLF after the file
        self.length = sum(p.size + overhead for p in self.parts) + len(_tail(self.boundary))

    @property
    def content_type(self) -> str:
        """The request's Content-Type (PS3.18 10.5.1.1)."""
        return f'multipart/related; type="{MEDIA_TYPE}"; boundary={self.boundary}'

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[bytes]:
        chunks = body_chunks(self.parts, self.boundary)
        if self.take is None:
            return chunks
        return _paced(chunks, self.take)


def _paced(chunks: Iterator[bytes], take: Callable[[int], object]) -> Iterator[bytes]:
    """The chunks, each let go only once ``take`` (a destination's bandwidth cap) allows
    its bytes; whatever ``take`` raises (a stop) ends the request."""
    for chunk in chunks:
        take(len(chunk))
        yield chunk


def body_chunks(parts: Sequence[Part], boundary: str) -> Iterator[bytes]:
    """The whole body, chunk by chunk: each part's header, its file as stored, the
    closing delimiter. The one place the body's bytes go by."""
    head = _part_head(boundary)
    for part in parts:
        yield head
        sent = 0
        with part.path.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                sent += len(chunk)
                yield chunk
        if sent != part.size:  # archived files never change; the length sent would lie
            raise OSError(f"{part.path} changed size while it was sent")
        yield b"\r\n"
    yield _tail(boundary)


def _part_head(boundary: str) -> bytes:
    return f"--{boundary}\r\nContent-Type: {MEDIA_TYPE}\r\n\r\n".encode("ascii")


def _tail(boundary: str) -> bytes:
    return f"--{boundary}--\r\n".encode("ascii")


@dataclass(frozen=True)
class InstanceAnswer:
    """What a STOW-RS answer says of one instance: stored (perhaps with a Warning
    Reason) or failed with its Failure Reason (None if the answer gave none)."""

    stored: bool
    reason: int | None = None


@dataclass(frozen=True)
class StowAnswer:
    """An HTTP answer to a STOW-RS request, read per instance."""

    status: int
    phrase: str
    instances: dict[str, InstanceAnswer]  # by SOP Instance UID; empty if it named none
    retry_after: float | None = None  # seconds, from Retry-After


def read_answer(status: int, phrase: str, headers: Any, body: bytes) -> StowAnswer:
    """The answer to a request; a body that is not DICOM JSON names no instance."""
    instances: dict[str, InstanceAnswer] = {}
    if body.strip():
        try:
            instances = instance_answers(json.loads(body))
        except (ValueError, TypeError, AttributeError, KeyError, IndexError):
            instances = {}
    return StowAnswer(status, phrase, instances, retry_after(headers.get("Retry-After")))


def instance_answers(document: Any) -> dict[str, InstanceAnswer]:
    """Referenced SOP Sequence (stored) and Failed SOP Sequence (failed) of a DICOM JSON
    answer (PS3.18 F.2), by SOP Instance UID."""
    if isinstance(document, list):  # some archives answer a list of one data set
        document = document[0] if document else {}
    found: dict[str, InstanceAnswer] = {}
    for item in _items(document, REFERENCED_SOP_SEQUENCE):
        uid = _first(item, REFERENCED_SOP_INSTANCE_UID)
        if isinstance(uid, str):
            found[uid] = InstanceAnswer(True, _code(_first(item, WARNING_REASON)))
    for item in _items(document, FAILED_SOP_SEQUENCE):
        uid = _first(item, REFERENCED_SOP_INSTANCE_UID)
        if isinstance(uid, str):
            found[uid] = InstanceAnswer(False, _code(_first(item, FAILURE_REASON)))
    return found


def _items(document: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    element = document.get(tag) or {}
    return [i for i in element.get("Value", []) if isinstance(i, dict)]


def _first(item: dict[str, Any], tag: str) -> Any:
    values = (item.get(tag) or {}).get("Value") or [None]
    return values[0]


def _code(value: Any) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, str):  # some write US values as strings, some in hex
        try:
            return int(value, 16) if value.lower().startswith("0x") else int(value)
        except ValueError:
            return None
    return None


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After (RFC 9110 10.2.3) in seconds from now: a number or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
