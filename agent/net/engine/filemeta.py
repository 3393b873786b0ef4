"""Each received file names its sender in its meta: Source Application Entity Title.

pynetdicom streams a received C-STORE data set to a temp file behind a file meta it
builds itself (``dimse_messages.create_file_meta``), and the archive keeps that file as
it arrived. Who sent an instance decides where it is forwarded (rules on ``calling_ae``;
never back to its sender), and the index that records it may lose its last commits in a
power cut: written into the file as (0002,0016), as DCMTK's storescp does, it is restored
with the instance by start-up recovery or a reindex. The data set's bytes are untouched;
the meta grows by one element.

Private names: ``DIMSEMessage.decode_msg`` (wrapped: it knows the association, and is
where the temp file and its meta are written) and ``dimse_messages.create_file_meta``
(replaced by a copy that adds the element).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from pydicom.dataset import FileMetaDataset
from pynetdicom import dimse_messages
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dsutils import create_file_meta as pynetdicom_file_meta

_AE_TITLE = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,16}")  # printable ASCII without backslash
_receiving: ContextVar[Any] = ContextVar("receiving", default=None)
_original_decode: Callable[..., bool] = DIMSEMessage.decode_msg


def decode_msg(self: Any, primitive: Any, assoc: Any = None) -> bool:
    """pynetdicom's own, with the association at hand for ``create_file_meta``."""
    token = _receiving.set(assoc)
    try:
        return _original_decode(self, primitive, assoc)
    finally:
        _receiving.reset(token)


def create_file_meta(*args: Any, **kwargs: Any) -> FileMetaDataset:
    """pynetdicom's file meta, plus the sending peer's AE title when it is a valid one."""
    meta = pynetdicom_file_meta(*args, **kwargs)
    title = peer_ae_title(_receiving.get())
    if title:
        meta.SourceApplicationEntityTitle = title
    return meta


def peer_ae_title(assoc: Any) -> str | None:
    """The AE title of the peer at the other end of ``assoc`` (the calling AE of an
    association we accepted; the called one of a C-GET we asked), if valid."""
    try:
        peer = assoc.requestor if assoc.is_acceptor else assoc.acceptor
        title = str(peer.ae_title).strip()
    except Exception:  # no association (a unit test's message), or one half built
        return None
    return title if _AE_TITLE.fullmatch(title) else None


def install() -> None:
    """Swap both in (the engine's ``install`` calls this once)."""
    setattr(DIMSEMessage, "decode_msg", decode_msg)  # noqa: B010
    setattr(dimse_messages, "create_file_meta", create_file_meta)  # noqa: B010
