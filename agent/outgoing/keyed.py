"""Consistent replacements: the same original gives the same UID, pseudonym and date
shift on every send and after every restart, so a study stays a study at the destination.

Each is an HMAC-SHA256 of the original under a secret of 32 random bytes kept in the data
directory (``outgoing.key``, mode 0600), created on first use and synced before it is used:
nobody without the file can link a replacement back to its original, and the box never
keeps a table of originals.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from pathlib import Path

SECRET_FILE = "outgoing.key"
SECRET_BYTES = 32
UID_ROOT = "2.25."  # PS3.5 B.2: a UUID-derived UID, here from 128 bits of the HMAC
MAX_SHIFT_DAYS = 3650

_lock = threading.Lock()
_secrets: dict[Path, bytes] = {}


def existing(root: Path) -> bytes | None:
    """The data directory's secret if it was created (``preview`` must not create it: it
    may run as another user than the agent)."""
    try:
        return secret(root) if (root / SECRET_FILE).is_file() else None
    except OSError:
        return None


def secret(root: Path) -> bytes:
    """The data directory's secret, created (0600, synced with its directory) on first use."""
    path = root / SECRET_FILE
    with _lock:
        known = _secrets.get(path)
        if known is None:
            known = _read_or_create(path)
            _secrets[path] = known
        return known


def _read_or_create(path: Path) -> bytes:
    """Read the secret, or make it whole beside it and link it in: a power cut never
    leaves a short one, and of two processes making it at once one wins, both read it."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        draft = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, os.urandom(SECRET_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(draft, path)
        except FileExistsError:
            pass
        finally:
            draft.unlink()
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    data = path.read_bytes()
    if len(data) != SECRET_BYTES:
        raise OSError(f"{path} is not a {SECRET_BYTES}-byte secret")
    return data


def digest(key: bytes, kind: str, original: str) -> bytes:
    """The keyed hash of ``original`` for one use (``kind``), so uses never collide."""
    return hmac.new(key, f"{kind}\0{original}".encode(), hashlib.sha256).digest()


def uid(key: bytes, original: str) -> str:
    """A new UID for ``original``: 2.25. and 128 bits as a decimal (44 characters at most)."""
    return UID_ROOT + str(int.from_bytes(digest(key, "uid", original.strip("\0 "))[:16], "big"))


def pseudonym(key: bytes, original: str, length: int = 12) -> str:
    """Upper-case hex standing for ``original`` (a patient ID)."""
    return digest(key, "id", original).hex()[:length].upper()


def shift_days(key: bytes, patient: str) -> int:
    """Days a patient's dates move back: the same for every instance of that patient."""
    return 1 + int.from_bytes(digest(key, "days", patient)[:4], "big") % MAX_SHIFT_DAYS
