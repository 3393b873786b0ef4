"""Who may read the metrics endpoint: with ``metrics.token_file`` set, only a request
whose ``Authorization`` header is ``Bearer <the file's content>``.

The file is read again when it changes (its inode, size or modification time), so a
token rotated on disk, or another file named by a reload, takes effect without a
restart. A file that cannot be read refuses every request (it fails closed) and says
why once, never with its content.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
from pathlib import Path

from agent.errors import ConfigError
from agent.metrics.settings import read_token

log = logging.getLogger(__name__)

Signature = tuple[Path, int, int, int]


class TokenCheck:
    """Compares a request's bearer token with the token file's, in constant time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._read: Signature | None = None  # the file as it was when last read
        self._token: bytes | None = None  # its content (None: unreadable)
        self._complaint: str | None = None  # the last reason given for refusing all

    def allows(self, path: Path | None, authorization: str | None) -> bool:
        """True without a token file, or when ``authorization`` carries its token."""
        if path is None:
            return True
        expected = self._current(path)
        scheme, _, given = (authorization or "").partition(" ")
        if expected is None or scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.strip().encode("utf-8"), expected)

    def _current(self, path: Path) -> bytes | None:
        """The token now in ``path``, read again only if the file changed."""
        try:
            stat = os.stat(path)
            signature: Signature | None = (path, stat.st_ino, stat.st_size, stat.st_mtime_ns)
        except OSError:
            signature = None
        with self._lock:
            if signature is None or signature != self._read:
                self._token = self._load(path)
                self._read = signature
            return self._token

    def _load(self, path: Path) -> bytes | None:
        try:
            token = read_token(path).encode("utf-8")
        except ConfigError as exc:
            if str(exc) != self._complaint:
                log.error("every metrics request is refused: %s", exc)
                self._complaint = str(exc)
            return None
        self._complaint = None
        return token
