"""The data directory's lock: one agent (or reindex) at a time on one archive."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from agent.errors import AgentError


class DataDirBusy(AgentError):
    """Another process (normally the running agent) holds the data directory."""


class DataDirLock:
    """An exclusive lock on a data directory: one agent (or reindex) at a time."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "agent.lock"
        self._handle: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock or raise AgentError saying who holds it."""
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise DataDirBusy(f"{self.path.parent.parent} is in use by pid {holder}") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        """Give the lock back."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
