"""``preview DEST FILE``: what a destination would receive of a stored file, as the
differences from the file, one attribute a line (the CLI and the console print it)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from agent.config import Config
from agent.errors import UsageError
from agent.outgoing import keyed
from agent.outgoing.writer import OutgoingError, changed, needed

MAX_VALUE = 64  # characters of a value shown


@dataclass(frozen=True)
class Preview:
    """The differences, or why the instance would not go."""

    destination: str
    differences: tuple[str, ...]
    held: str = ""  # the reason it would not be sent, if so
    note: str = ""

    @property
    def summary(self) -> str:
        """One line: how many attributes change, or that it is held."""
        if self.held:
            return f"{self.destination} would not receive it: {self.held}"
        if not self.differences:
            return f"{self.destination} receives the file as stored"
        return f"{self.destination} receives {len(self.differences)} attributes changed"

    def lines(self) -> list[str]:
        """As the CLI prints it: the summary, then one line per attribute."""
        return [self.summary, *self.differences, *([self.note] if self.note else [])]


def preview(config: Config, destination: str, file: Path) -> Preview:
    """What ``destination`` would receive of ``file``; UsageError for an unknown peer or
    an unreadable file. The data directory's secret is used, so the UIDs shown are those
    sent; it is never created here (a throwaway one stands in, and a note says so)."""
    peer = config.peers.get(destination)
    if peer is None:
        raise UsageError(f"{destination!r} is not a configured peer")
    try:
        before = dcmread(file, stop_before_pixels=True)
        if peer.outgoing is None or not needed(peer.outgoing):
            return Preview(destination, ())
        key = keyed.existing(config.agent.data_dir)
        with file.open("rb") as source:
            after, _pixels, _touched = changed(peer.outgoing, source, config.agent.data_dir,
                                               key or os.urandom(keyed.SECRET_BYTES))
    except OutgoingError as exc:
        return Preview(destination, (), held=str(exc))
    except OSError as exc:
        raise UsageError(f"cannot read {file}: {exc.strerror or exc}") from None
    except Exception as exc:  # pydicom: not a DICOM file
        raise UsageError(f"cannot read {file}: {exc}") from None
    note = "" if key or not peer.outgoing.deidentify else (
        "new UIDs and pseudonyms shown are examples: the agent makes its secret at its"
        " first de-identified send")
    return Preview(destination, tuple(differences(before, after)), note=note)


def differences(before: Dataset, after: Dataset, prefix: str = "") -> list[str]:
    """One line per attribute added, removed or changed, sequences item by item."""
    lines: list[str] = []
    for tag in sorted({int(e.tag) for e in before} | {int(e.tag) for e in after}):
        old, new = before.get(tag), after.get(tag)
        name = _name(tag, old if old is not None else new)
        where = f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {prefix}{name}"
        if new is None:
            lines.append(f"{where}: removed")
        elif old is None:
            lines.append(f"{where}: added {_shown(new)}")
        elif old.VR == "SQ" and new.VR == "SQ":
            lines += _items(old.value, new.value, f"{prefix}{name}", where)
        elif _shown(old) != _shown(new):
            lines.append(f"{where}: {_shown(old)} -> {_shown(new)}")
    return lines


def _items(old: list[Dataset], new: list[Dataset], path: str, where: str) -> list[str]:
    if len(old) != len(new):
        return [f"{where}: {len(old)} items -> {len(new)} items"]
    lines: list[str] = []
    for i, (a, b) in enumerate(zip(old, new, strict=True)):
        lines += differences(a, b, f"{path}[{i}].")
    return lines


def _name(tag: int, elem: object) -> str:
    keyword = getattr(elem, "keyword", "")
    return str(keyword) if keyword else "private" if (tag >> 16) % 2 else "unknown"


def _shown(elem: object) -> str:
    value = getattr(elem, "value", None)
    if getattr(elem, "VR", "") == "SQ":
        return f"{len(value or [])} items"
    if isinstance(value, bytes):
        return f"{len(value)} bytes"
    many = isinstance(value, (list, tuple, MultiValue))
    text = "" if value is None else "\\".join(map(str, value)) if many else str(value)
    text = text if len(text) <= MAX_VALUE else text[:MAX_VALUE] + "..."
    return f"'{text}'"
