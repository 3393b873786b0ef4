"""C-FIND on a peer: what does it hold? The answers as a table or as DICOM JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset

from agent.config import Config
from agent.net.scu import resolve_target
from agent.qr import FindRequest, FindResult, find
from agent.qr.identifiers import Key, model_name

HIDDEN = frozenset({"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle"})
WIDEST = 40


@dataclass(frozen=True)
class FindReport:
    """The answers to one C-FIND and how it ended."""

    result: FindResult

    @property
    def succeeded(self) -> bool:
        """The peer ended the C-FIND with success (or a warning)."""
        return self.result.outcome.succeeded

    @property
    def summary(self) -> str:
        """One line: how many matches, from whom, how it ended."""
        return summary(self.result)

    def lines(self) -> list[str]:
        """The matches as aligned columns, then the summary line."""
        return [*table(self.result.matches, self.result.request.returned()), self.summary]

    def json_lines(self) -> list[str]:
        """The matches in the DICOM JSON model."""
        return json.dumps([m.to_json_dict() for m in self.result.matches], indent=1).splitlines()


def find_on_peer(
    config: Config, peer: str, request: FindRequest, *, timeout: float = 30.0
) -> FindReport:
    """Run one C-FIND on a configured peer or AET@HOST:PORT; PeerError if it has no end."""
    return FindReport(find(config, resolve_target(config, peer), request, timeout=timeout))


def table(matches: Sequence[Dataset], keys: Sequence[Key]) -> list[str]:
    """The answers as aligned columns, one row per match (nothing when none matched)."""
    columns = [key for key in keys if key.keyword not in HIDDEN]
    rows = [[cell(match, key) for key in columns] for match in matches]
    if not rows:
        return []
    heads = [key.keyword for key in columns]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(heads)]
    return [
        "  ".join(text.ljust(w) for text, w in zip(line, widths, strict=True)).rstrip()
        for line in [heads, *rows]
    ]


def cell(match: Dataset, key: Key) -> str:
    """One value as text: several values joined by backslash, long ones cut."""
    element = match.get(key.tag)
    if element is None or element.value is None:
        return ""
    if element.VR == "SQ":
        return f"({len(element.value)} items)"
    value = element.value
    several = element.VM > 1 and not isinstance(value, (str, bytes))
    text = "\\".join(str(v) for v in value) if several else str(value)
    text = text.replace("\n", " ")
    if element.VR == "UI" or len(text) <= WIDEST:  # a UID is copied whole to retrieve
        return text
    return text[: WIDEST - 1] + "…"


def summary(result: FindResult) -> str:
    """One line: how many matches, from whom, how it ended."""
    count = len(result.matches)
    noun = "match" if count == 1 else "matches"
    where = f"{model_name(result.request.model)}, {result.request.level.value} level"
    return f"{count} {noun} from {result.target} ({where}): {result.outcome}"
