"""A pynetdicom storage SCU for tests that need each C-STORE's status."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE, _config
from pynetdicom.presentation import build_context


def _contexts_for(paths: list[Path]) -> list[object]:
    pairs = set()
    for path in paths:
        meta = dcmread(path, stop_before_pixels=True).file_meta
        pairs.add((str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)))
    return [build_context(sop, [syntax]) for sop, syntax in sorted(pairs)]


def store(port: int, paths: Iterable[Path], *, calling_ae: str = "MODALITY",
          called_ae: str = "EDGE",
          after_each: Callable[[Path, int], None] | None = None) -> list[int]:
    """Send files over one association, each in its own transfer syntax; return statuses.

    A status of -1 means no response (the association died).
    """
    paths = list(paths)
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title=calling_ae)
    ae.requested_contexts = _contexts_for(paths)
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    if not assoc.is_established:
        raise ConnectionError("association not established")
    statuses = []
    try:
        for path in paths:
            response = assoc.send_c_store(path) if assoc.is_established else None
            status = int(response.Status) if response and "Status" in response else -1
            statuses.append(status)
            if after_each:
                after_each(path, status)
    finally:
        if assoc.is_established:
            assoc.release()
    return statuses

