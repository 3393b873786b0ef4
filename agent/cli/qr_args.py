"""Options that ``find`` and ``retrieve`` share, spelt as DCMTK's findscu/movescu spell them."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TextIO

from agent.dicom.models import Model
from agent.qr import Progress


def add_common(parser: argparse.ArgumentParser) -> None:
    """PEER, the information model (-P/-S/-O), -k keys and --timeout."""
    parser.add_argument(
        "peer", metavar="PEER", help="a peer name from the config, or AET@HOST:PORT"
    )
    models = parser.add_mutually_exclusive_group()
    for flag, model, words in (
        ("-P", Model.PATIENT_ROOT, "Patient Root"),
        ("-S", Model.STUDY_ROOT, "Study Root (the default)"),
        ("-O", Model.PATIENT_STUDY_ONLY, "Patient/Study Only"),
    ):
        models.add_argument(flag, dest="model", action="store_const", const=model, help=words)
    parser.add_argument(
        "-k",
        "--key",
        dest="keys",
        action="append",
        default=[],
        metavar="KEY[=VALUE]",
        help="a key as DCMTK writes it: PatientName=DOE*, StudyDate=20260101-, "
        "(0010,0020)=123; no value asks for the key back",
    )
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="give up on a peer that does not answer within this long (default %(default)g)",
    )


def _seconds(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return value


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
