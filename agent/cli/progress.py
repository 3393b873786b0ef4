"""What ``retrieve`` shows while it runs: the pending responses' counts."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from agent.qr import Progress


class ProgressReport:
    """Pending-response counts: a bar on a terminal, a line every few seconds otherwise."""

    BAR = 30

    def __init__(self, out: TextIO = sys.stderr, *, every: float = 2.0) -> None:
        self.out = out
        self.tty = bool(getattr(out, "isatty", lambda: False)())
        self.every = every
        self._last = 0.0

    def __call__(self, progress: Progress) -> None:
        """Show one pending response's counts."""
        total = progress.done + (progress.remaining or 0)
        counts = f"{progress.done}/{total or '?'} done, {progress.failed} failed"
        if self.tty:
            filled = self.BAR * progress.done // total if total else 0
            bar = "#" * filled + "." * (self.BAR - filled)
            self.out.write(f"\r[{bar}] {counts}")
            self.out.flush()
        elif time.monotonic() - self._last >= self.every:
            self._last = time.monotonic()
            self.out.write(f"retrieving: {counts}\n")
            self.out.flush()

    def finish(self) -> None:
        """End the bar's line."""
        if self.tty:
            self.out.write("\n")
            self.out.flush()
