"""Temp files a receive left behind (it died, or its association was cut), found by how
long nobody has written to them, timed on the monotonic clock.

Comparing a file's modification time with the wall clock would make a jump of a year
forward call the file being received right now a year old (and delete it mid-receive),
and a jump back keep every leftover for a year. Instead each look notes every file's
size and modification time; a file counts as written to whenever they changed since the
last look, and is stale once they stayed the same for the whole period. After a restart
every file is timed again from the first look: a leftover waits one period more.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

Signature = tuple[int, int]  # (size, modification time in ns): changes when written to


class StaleFiles:
    """Removes the files of one directory nobody wrote to for a period."""

    def __init__(self, directory: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.directory = directory
        self.clock = clock
        self._seen: dict[str, tuple[Signature, float]] = {}  # name: (signature, unchanged since)

    def sweep(self, after: float) -> int:
        """Remove the files unchanged for ``after`` seconds; how many went."""
        now, seen, removed = self.clock(), {}, 0
        for entry in os.scandir(self.directory):
            try:
                stat = entry.stat()
            except OSError:
                continue  # gone meanwhile (ingested, or removed by its receive)
            signature = (stat.st_size, stat.st_mtime_ns)
            known = self._seen.get(entry.name)
            since = known[1] if known is not None and known[0] == signature else now
            if now - since < after:
                seen[entry.name] = (signature, since)
                continue
            try:
                os.unlink(entry.path)
            except OSError:
                continue
            removed += 1
            log.info("removed a stale temp file left by a failed receive")
        self._seen = seen
        return removed
