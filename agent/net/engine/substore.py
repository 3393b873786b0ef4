"""One C-STORE of a stored file, the way C-GET and C-MOVE sub-operations send them.

pynetdicom's ``send_c_store(path)`` reads the file meta through pydicom, looks the
context up, parks the association's reactor and spins on ``time.sleep(0.0001)`` until
the reactor thread has said so, then turns the response into a Dataset. On the
association a C-MOVE opens to its destination that handshake alone was a third of
each sub-operation's wall time: the reactor thread had to be scheduled twice per file.
Here the file meta is read by a small parser, the context comes from a table built
once per association, and the reactor is held off without waiting for it: our
``ParkingGate`` guarantees that once it is closed the reactor takes no message, so
there is nothing to wait for. Anything unusual takes pynetdicom's own path.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import weakref
from functools import cache
from pathlib import Path
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import split_dataset

from agent.dicom.status import PROCESSING_FAILURE
from agent.dicom.wire import EXPLICIT_LE, read_header
from agent.net.engine.reactor import ParkingGate

log = logging.getLogger(__name__)

STATUS = 0x00000900  # (0000,0900) Status
HEAD = 4096  # bytes read to find the file meta; a larger group goes through pydicom
WHOLE = 1 << 20  # a file up to this size is read at once, and its bytes sent from memory
LOOK = 1.0  # seconds between looks at whether the association died while we wait
PREAMBLE = 128
_META_UIDS = {0x00020002: "sop_class", 0x00020003: "sop_instance", 0x00020010: "syntax"}
_ahead: weakref.WeakKeyDictionary[Any, tuple[Path, FileMeta]] = weakref.WeakKeyDictionary()
_contexts: weakref.WeakKeyDictionary[Any, dict[tuple[str, str], int]] = weakref.WeakKeyDictionary()
_ended: weakref.WeakSet[Any] = weakref.WeakSet()  # associations a C-STORE found over (said once)


class FileMeta:
    """What a stored file's meta says: where its data set starts, and its three UIDs."""

    __slots__ = ("contents", "offset", "sop_class", "sop_instance", "syntax")

    def __init__(self, offset: int, sop_class: str, sop_instance: str, syntax: str) -> None:
        self.offset = offset
        self.sop_class = sop_class
        self.sop_instance = sop_instance
        self.syntax = syntax
        self.contents: bytes | None = None  # the whole file, when it was small enough


class ReadPath(tuple):  # type: ignore[type-arg]
    """pynetdicom's (path, offset) of a data set to send, with the file's bytes if read.

    pynetdicom's own path uses the pair; the engine's sends use ``contents`` and so
    open and read a small file once, not once for its meta and again for its data.
    """

    contents: bytes | None = None


def _parse_meta(head: bytes) -> FileMeta | None:
    """The file meta of a Part 10 file's first bytes; None if it does not fit or is odd."""
    if head[PREAMBLE : PREAMBLE + 4] != b"DICM":
        return None
    found: dict[str, str] = {}
    position = PREAMBLE + 4
    while True:
        header = read_header(head, position, EXPLICIT_LE)
        if header is None:
            return None  # the group may go on past what we read
        tag, vr, length, size = header
        if tag >> 16 != 2:
            break
        start = position + size
        end = start + length
        if end > len(head):
            return None
        if tag in _META_UIDS:
            raw = head[start:end]
            if vr != b"UI" or not raw.isascii():
                return None
            found[_META_UIDS[tag]] = raw.rstrip(b"\0 ").decode("ascii")
        position = end
    if len(found) != len(_META_UIDS):
        return None
    return FileMeta(position, found["sop_class"], found["sop_instance"], found["syntax"])


def file_meta(path: Path) -> FileMeta:
    """The file meta of ``path`` (pydicom reads what the small parser does not take)."""
    with open(path, "rb", buffering=0) as handle:
        size = os.fstat(handle.fileno()).st_size
        # the exact size: reading "up to" a larger block cost three times as much
        head = handle.read(size if size <= WHOLE else HEAD)
    parsed = _parse_meta(head[:HEAD])
    if parsed is not None:
        if len(head) == size:
            parsed.contents = head
        return parsed
    meta, offset = split_dataset(path)
    missing = [
        kw
        for kw in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID")
        if kw not in meta
    ]
    if missing:
        raise AttributeError(f"{path} lacks file meta elements: {', '.join(missing)}")
    return FileMeta(
        offset,
        str(meta.MediaStorageSOPClassUID),
        str(meta.MediaStorageSOPInstanceUID),
        str(meta.TransferSyntaxUID),
    )


def has_context(assoc: Association, sop_class: str, syntax: str) -> bool:
    """True if ``assoc`` accepted a context to send this SOP class in this syntax on."""
    try:
        context_id(assoc, sop_class, syntax)
    except ValueError:
        return False
    return True


def context_id(assoc: Association, sop_class: str, syntax: str) -> int:
    """The accepted context to send this SOP class in this syntax on (as SCU).

    The table is built on first use: an association's accepted contexts never change.
    """
    table = _contexts.get(assoc)
    if table is None or not table:  # none accepted yet: look again
        table = {}
        for cx in assoc.accepted_contexts:
            key = (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
            if cx.as_scu and key not in table and cx.context_id is not None:
                table[key] = cx.context_id
        _contexts[assoc] = table
    try:
        return table[(sop_class, syntax)]
    except KeyError:
        raise ValueError(f"no accepted context for {sop_class} in {syntax}") from None


def can_send(assoc: Association) -> bool:
    """True if ``send_file`` may serve this association (else use pynetdicom's path)."""
    return threading.current_thread() is assoc or isinstance(assoc._reactor_checkpoint, ParkingGate)


def send_file(
    assoc: Association,
    path: Path,
    *,
    msg_id: int = 1,
    priority: int = 2,
    originator_aet: str | None = None,
    originator_id: int | None = None,
    read_ahead: Path | None = None,
) -> Dataset:
    """Send ``path`` as stored in one C-STORE; the response's status as pynetdicom gives it.

    ``read_ahead``, the file to be sent next, is read while the peer stores this one.
    """
    meta = _taken_ahead(assoc, path) or file_meta(path)
    over = gone(assoc, meta.sop_instance)
    if over is not None:
        return over
    request = C_STORE()
    request.MessageID = msg_id
    request.Priority = priority
    request.MoveOriginatorApplicationEntityTitle = originator_aet
    request.MoveOriginatorMessageID = originator_id
    request.AffectedSOPClassUID = meta.sop_class
    request.AffectedSOPInstanceUID = meta.sop_instance
    where = ReadPath((path, meta.offset))
    where.contents = meta.contents
    request._dataset_path = where
    cx_id = context_id(assoc, meta.sop_class, meta.syntax)
    gate = None  # the association's own thread sends without parking itself
    if threading.current_thread() is not assoc:
        gate = cast(ParkingGate, assoc._reactor_checkpoint)  # as can_send made sure
    if gate is not None:
        gate.hold()
    try:
        assoc.dimse.send_msg(request, cx_id)
        if read_ahead is not None:
            _read_ahead(assoc, read_ahead)
        response = _response(assoc)
    finally:
        if gate is not None:
            gate.set()
    return _status_of(assoc, response, meta.sop_instance)


def _response(assoc: Association) -> Any:
    """The next message for us, or None after the DIMSE timeout or once the DUL has died.

    pynetdicom's wait (``get_msg(block=True)``) sees an abort only through the None the
    state machine queues, which the association thread may have taken between two
    sub-operations: then it waited out the whole DIMSE timeout.
    """
    timeout = assoc.dimse.dimse_timeout
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        wait = LOOK if deadline is None else min(LOOK, deadline - time.monotonic())
        try:
            return assoc.dimse.msg_queue.get(timeout=max(wait, 0.0))[1]
        except queue.Empty:
            if not assoc.dul.is_alive() or (deadline is not None and time.monotonic() >= deadline):
                return None


def _read_ahead(assoc: Association, path: Path) -> None:
    """Read the next file to send now, while the peer is busy; a failure waits its turn."""
    try:
        _ahead[assoc] = (path, file_meta(path))
    except Exception:
        _ahead.pop(assoc, None)  # read (and fail) again when it is this file's turn


def _taken_ahead(assoc: Association, path: Path) -> FileMeta | None:
    """The file meta (and bytes) of ``path`` if they were read ahead for this association."""
    entry = _ahead.pop(assoc, None)
    return entry[1] if entry is not None and entry[0] == path else None


def _status_of(assoc: Association, response: Any, sop_instance: str) -> Dataset:
    """The Status (and its optional elements) of a response; a failure if none or a bad one."""
    if response is None:
        return no_answer(assoc, sop_instance)
    if not response.is_valid_response:
        return no_answer(assoc, sop_instance, invalid=True)
    details = {
        keyword: value
        for keyword in response.STATUS_OPTIONAL_KEYWORDS
        if (value := getattr(response, keyword, None)) is not None
    }
    if not details:
        return _plain_status(int(response.Status))
    status = Dataset()
    status.add_new(STATUS, "US", response.Status)
    for keyword, value in details.items():
        setattr(status, keyword, value)
    return status


def gone(assoc: Association, sop_instance: str) -> Dataset | None:
    """None if ``assoc`` can carry a C-STORE; else a failure, said once per association.

    A peer that ends the association between two sub-operations is noticed by the next
    one: that instance is named; the rest of the C-MOVE or C-GET fail without a line.
    """
    if assoc.is_established and assoc not in _ended:
        return None
    if assoc in _ended:
        log.debug("instance %s not sent: the association had ended", sop_instance)
    else:
        _ended.add(assoc)
        log.warning(
            "did not send instance %s to %s: the association had ended"
            " (a failed sub-operation, as are the rest)",
            sop_instance,
            peer_of(assoc),
        )
    return failure("not sent: the association had ended")


def no_answer(assoc: Association, sop_instance: str, *, invalid: bool = False) -> Dataset:
    """A C-STORE that got no (valid) response: one line saying so, and a failure status.

    pynetdicom's own answer, an empty data set, made its C-MOVE and C-GET loops log
    "'Dataset' object has no attribute 'Status'" and nothing about who or what.
    """
    if invalid or (assoc.is_established and not assoc.acse.is_aborted()):
        what = (
            "its response was invalid"
            if invalid
            else f"no response within the DIMSE timeout ({assoc.dimse_timeout} s)"
        )
        assoc.abort()
        what += "; the association was aborted"
    elif getattr(assoc, "_sent_abort", False):
        what = "the association was aborted here before it answered"
    else:
        what = "it ended the association before answering"
        # over, whether or not the association thread has seen it yet: no sub-operation
        # may wait for an answer, nor pynetdicom release it (an invalid event in Sta1)
        assoc.is_established = False
    _ended.add(assoc)
    log.warning(
        "C-STORE of instance %s to %s failed: %s (a failed sub-operation)",
        sop_instance,
        peer_of(assoc),
        what,
    )
    return failure(f"no C-STORE response: {what}")


def failure(comment: str) -> Dataset:
    """A C-STORE failure status (0x0110 Processing Failure) with an Error Comment."""
    status = Dataset()
    status.add_new(STATUS, "US", PROCESSING_FAILURE)
    status.ErrorComment = comment[:64]  # LO
    return status


def peer_of(assoc: Association) -> str:
    """The peer of an association, for a log line: AE title at address:port."""
    peer = assoc.acceptor if assoc.is_requestor else assoc.requestor
    title = str(getattr(peer, "ae_title", "") or "").strip() or "the peer"
    return f"{title} at {peer.address}:{peer.port}"


class SharedStatus(Dataset):
    """A status data set that refuses changes once built, so that it can be shared."""

    def __init__(self, code: int) -> None:
        super().__init__()
        self.add_new(STATUS, "US", code)
        object.__setattr__(self, "_frozen", True)

    def _refuse(self, *args: Any) -> None:
        if getattr(self, "_frozen", False):
            raise TypeError("a shared status data set cannot be changed: copy it first")

    def __setattr__(self, name: str, value: Any) -> None:
        self._refuse()
        super().__setattr__(name, value)

    def __setitem__(self, key: Any, value: Any) -> None:
        self._refuse()
        super().__setitem__(key, value)

    def __delattr__(self, name: str) -> None:
        self._refuse()
        super().__delattr__(name)

    def __delitem__(self, key: Any) -> None:
        self._refuse()
        super().__delitem__(key)


@cache
def _plain_status(code: int) -> Dataset:
    """The status data set of a response with no details, shared: pynetdicom's
    sub-operation loops read its Status and drop it, and building a Dataset cost a
    fifth of what the loop spends per sub-operation."""
    return SharedStatus(code)
