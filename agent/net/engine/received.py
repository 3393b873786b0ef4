"""The temp file a received C-STORE data set streams into, and what to do when it fails.

pynetdicom writes a received data set, PDV by PDV, to a ``NamedTemporaryFile`` as it
arrives (``_config.STORE_RECV_CHUNKED_DATASET``), in the thread that reads the socket.
A write that fails there (the disk full, an I/O error) raised through the DUL, which
dropped the connection: the modality saw an abort, not a reason. ``ReceivedFile`` takes
the file's place: the first failure is kept, the partial file is closed and deleted at
once (its space is free again), and the rest of the data set is read and discarded, so
the message completes and the C-STORE handler can answer 0xA700 with the reason, on an
association that stays usable for the next C-STORE.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from typing import Any

from pynetdicom import dimse_messages
from pynetdicom.dimse_primitives import C_STORE


class ReceivedFile:
    """A stand-in for pynetdicom's ``NamedTemporaryFile`` that keeps its first OSError."""

    def __init__(self, **options: Any) -> None:
        self.error: OSError | None = None
        self._file: Any = None
        try:
            # closed by close(), as pynetdicom closes the file it made
            self._file = tempfile.NamedTemporaryFile(**options)  # noqa: SIM115
            self._writer: Any = self._file.file  # the buffered file itself: no delegation
            self.name: str = self._file.name
        except OSError as exc:  # a name that never exists: deleting it later does nothing
            self.error = exc
            unwritten = f"unwritten-{secrets.token_hex(8)}{options.get('suffix', '')}"
            self.name = os.path.join(tempfile.gettempdir(), unwritten)

    @property
    def file(self) -> ReceivedFile:
        """pynetdicom flushes ``file.file`` after each PDV: this object answers for it."""
        return self

    def write(self, data: bytes) -> int:
        """Write ``data``; after a failure, discard it (the data set is still read to its end)."""
        if self.error is None:
            try:
                return int(self._writer.write(data))
            except OSError as exc:
                self._fail(exc)
        return len(data)

    def flush(self) -> None:
        """Flush to the file (a full disk may show only here)."""
        if self.error is None:
            try:
                self._writer.flush()
            except OSError as exc:
                self._fail(exc)

    def close(self) -> None:
        """Close the file (idempotent); a failure to flush on closing is kept too."""
        if self._file is None:
            return
        handle, self._file = self._file, None
        try:
            handle.close()  # closes the descriptor even when the last flush fails
        except OSError as exc:
            if self.error is None:
                self.error = exc

    def _fail(self, exc: OSError) -> None:
        """Keep the first error; close and delete what was written, so the space is free."""
        self.error = exc
        handle, self._file = self._file, None
        with contextlib.suppress(OSError):
            handle.close()
        with contextlib.suppress(OSError):
            os.unlink(self.name)


def install() -> None:
    """Make pynetdicom stream received data sets into ``ReceivedFile``s."""
    setattr(dimse_messages, "NamedTemporaryFile", ReceivedFile)  # noqa: B010


def write_failure(request: C_STORE) -> OSError | None:
    """The local error that cost a C-STORE request its data set, if one did."""
    received = getattr(request, "_dataset_file", None)
    return received.error if isinstance(received, ReceivedFile) else None
