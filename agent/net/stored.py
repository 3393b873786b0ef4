"""Sending archived files as they are stored, from C-GET, C-MOVE and the forwarder.

pynetdicom's C-GET and C-MOVE service classes take a ``Dataset`` from our handler and
hand it to ``send_c_store``, which would encode it again: Implicit VR would leave as
Explicit, retired Group Lengths would be dropped, a compressed file could not go on an
uncompressed context. Our handlers yield a ``StoredFile`` instead, and the association's
``send_c_store`` (wrapped by ``send_as_stored``) sends the file itself when its syntax
was accepted (through the engine's own C-STORE, agent/net/engine/substore.py, which
also reads the next file while the peer stores this one), and a decoded copy to
convert only when it was not. A syntax the peer took for none of its contexts is
converted into one it did (agent/dicom/transcode.py) in a temporary file, sent, and
removed: the archived file never changes.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydicom import dcmread, uid
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID

from agent.dicom import codecs, transcode
from agent.dicom.contexts import UNCOMPRESSED
from agent.net.engine import substore

log = logging.getLogger(__name__)

_WRAPPED = "_edge_agent_sends_stored"
SOP_CLASS_UID = 0x00080016
SOP_INSTANCE_UID = 0x00080018


class StoredFile(Dataset):
    """An archived instance to send: its UIDs (so failures are listed) and its file."""

    def __init__(
        self,
        path: Path,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax: str,
        *,
        following: Path | None = None,
    ) -> None:
        super().__init__()
        # by tag and VR: a keyword lookup per element cost a tenth of the handler's time
        self[SOP_CLASS_UID] = DataElement(SOP_CLASS_UID, "UI", sop_class_uid)
        self[SOP_INSTANCE_UID] = DataElement(SOP_INSTANCE_UID, "UI", sop_instance_uid)
        # plain attributes, set as pydicom would after looking each name up as a keyword
        object.__setattr__(self, "stored_path", path)
        object.__setattr__(self, "stored_syntax", transfer_syntax)
        object.__setattr__(self, "following", following)  # the next file to send: read ahead

    stored_path: Path
    stored_syntax: str
    following: Path | None


class NotRetrieved(Dataset):
    """An instance a fall-through retrieve counted but could not get from the peer: its
    sub-operation fails (and its UID is listed as failed) without a C-STORE."""

    def __init__(self, sop_instance_uid: str, why: str) -> None:
        super().__init__()
        self[SOP_INSTANCE_UID] = DataElement(SOP_INSTANCE_UID, "UI", sop_instance_uid)
        object.__setattr__(self, "why", why)

    why: str


def accepts_as_stored(assoc: Any, sop_class_uid: str, transfer_syntax: str) -> bool:
    """True if ``assoc`` has a context on which we may send this SOP class in this syntax."""
    return substore.has_context(assoc, sop_class_uid, transfer_syntax)


def sendable(assoc: Any, sop_class_uid: str, transfer_syntax: str, path: Path) -> Path | Dataset:
    """The file itself when its syntax was accepted, else a decoded copy to convert.

    Only uncompressed files convert here (pynetdicom changes the VR encoding); any other
    file the peer does not take as stored raises ValueError (``sending`` converts it).
    """
    if not path.is_file():
        raise FileNotFoundError("its file is gone from the archive")
    if accepts_as_stored(assoc, sop_class_uid, transfer_syntax):
        return path
    if transfer_syntax not in UNCOMPRESSED or not _accepted(assoc, sop_class_uid, UNCOMPRESSED):
        raise ValueError(
            f"it is stored as {UID(transfer_syntax).name}, which the peer accepted for"
            f" none of its contexts for {UID(sop_class_uid).name}"
        )
    return dcmread(path, defer_size="256 KB")


def _accepted(assoc: Any, sop_class_uid: str, syntaxes: tuple[str, ...]) -> list[str]:
    """Those of ``syntaxes`` the peer accepted a context for, for this SOP class."""
    return [s for s in syntaxes if substore.has_context(assoc, sop_class_uid, s)]


def conversion_target(assoc: Any, sop_class_uid: str, transfer_syntax: str) -> str | None:
    """The syntax to convert an instance into for this peer, or None if it takes none.

    Decompressed first (little endian, then big endian for a peer taking only that); an
    uncompressed instance may also be compressed losslessly. Lossy data is only ever
    decompressed (transcode says so).
    """
    candidates: tuple[str, ...] = (*UNCOMPRESSED, uid.ExplicitVRBigEndian)
    if transfer_syntax in codecs.NATIVE:
        candidates += (*codecs.ENCODINGS, codecs.DEFLATED)
    taken = _accepted(assoc, sop_class_uid, candidates)
    return taken[0] if taken else None


@contextmanager
def sending(
    assoc: Any,
    sop_class_uid: str,
    transfer_syntax: str,
    path: Path,
    workdir: Path | None = None,
) -> Iterator[Path | Dataset]:
    """What to send of an archived instance over ``assoc``: as ``sendable`` says, or else
    a copy converted to a syntax the peer accepted, in a temporary file (in ``workdir``,
    else the process's temporary directory) removed on leaving.

    Raises ValueError (a ``ConversionError`` saying why, in words) if neither can be done.
    """
    try:
        sent = sendable(assoc, sop_class_uid, transfer_syntax, path)
    except ValueError as refused:
        target = conversion_target(assoc, sop_class_uid, transfer_syntax)
        if target is None:
            raise refused from None
        handle, name = tempfile.mkstemp(".dcm", "convert-", workdir)
        os.close(handle)
        converted = Path(name)
        try:
            transcode.convert(path, target, converted)
            log.debug("instance in %s converted from %s to %s to send", path,
                      codecs.name(transfer_syntax), codecs.name(target))
            yield converted
        finally:
            converted.unlink(missing_ok=True)
        return
    yield sent


def send_as_stored(assoc: Any) -> None:
    """Let ``assoc.send_c_store`` take a ``StoredFile`` (idempotent, per association).

    Every outcome is a status pynetdicom's C-MOVE and C-GET loops can count: an instance
    that cannot be sent, or that got no response, is a failure with one line in words
    (who, which instance, why); once the association has ended, the rest fail quietly.
    """
    if getattr(assoc, _WRAPPED, False):
        return
    original: Callable[..., Any] = assoc.send_c_store

    def send_c_store(dataset: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(dataset, NotRetrieved):
            log.warning("did not send instance %s to %s: not retrieved from the fall-through"
                        " peer: %s (a failed sub-operation)", dataset.SOPInstanceUID,
                        substore.peer_of(assoc), dataset.why)
            return substore.failure(f"not retrieved: {dataset.why}")
        if not isinstance(dataset, StoredFile):
            return original(dataset, *args, **kwargs)
        instance = str(dataset.SOPInstanceUID)
        over = substore.gone(assoc, instance)
        if over is not None:
            return over
        try:
            with sending(
                assoc, dataset.SOPClassUID, dataset.stored_syntax, dataset.stored_path
            ) as sent:
                return _send(assoc, original, dataset, sent, *args, **kwargs)
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            log.warning(
                "did not send instance %s to %s: %s (a failed sub-operation)",
                instance,
                substore.peer_of(assoc),
                reason,
            )
            return substore.failure(f"not sent: {reason}")

    assoc.send_c_store = send_c_store
    setattr(assoc, _WRAPPED, True)


def _send(
    assoc: Any,
    original: Callable[..., Any],
    dataset: StoredFile,
    sent: Path | Dataset,
    *args: Any,
    **kwargs: Any,
) -> Any:
    """One C-STORE of what ``sending`` gave: a file through the engine when it can."""
    if isinstance(sent, Path) and not args and substore.can_send(assoc):
        following = dataset.following if sent == dataset.stored_path else None
        return substore.send_file(assoc, sent, read_ahead=following, **kwargs)
    status = original(sent, *args, **kwargs)
    instance = str(dataset.SOPInstanceUID)
    return status if "Status" in status else substore.no_answer(assoc, instance)


def on_accepted(event: Any) -> None:
    """EVT_ACCEPTED handler for the associations a C-MOVE opens to its destination."""
    send_as_stored(event.assoc)
