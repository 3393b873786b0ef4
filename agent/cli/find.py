"""``edge-agent find PEER [-P|-S|-O] [-L LEVEL] -k Key=Value ...``: what does the peer hold?"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TextIO

from pydicom.dataset import Dataset

from agent.cli.common import load_config
from agent.cli.qr_args import add_common
from agent.config import Config
from agent.dicom.models import Level, Model
from agent.net.scu import resolve_target
from agent.qr import FindRequest, FindResult, find
from agent.qr.identifiers import Key, model_name, parse_keys

NAME = "find"
HELP = "C-FIND on a peer (the PACS): patients, studies, series or images matching keys"
HIDDEN = frozenset({"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle"})
WIDEST = 40


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """PEER, model, level, keys, output."""
    add_common(parser)
    parser.add_argument(
        "-L",
        "--level",
        type=str.upper,
        choices=[level.value for level in Level],
        help="query level (default PATIENT with -P, else STUDY)",
    )
    parser.add_argument("--json", action="store_true", help="print the DICOM JSON model")
    parser.add_argument(
        "--only", action="store_true", help="ask only for the -k keys, not the level's defaults"
    )


def run(args: argparse.Namespace) -> int:
    """Query, print, exit 0 on success (or warning), 1 on a failure status."""
    return execute(args, load_config(args), sys.stdout, errors=sys.stderr)


def execute(
    args: argparse.Namespace, config: Config, out: TextIO, *, errors: TextIO | None = None
) -> int:
    """The command's work, printing to ``out`` (the CLI's stdout or the serial console).

    With ``--json`` a failure is told on ``errors`` (default ``out``), keeping stdout JSON.
    """
    request = request_from(args)
    result = find(config, resolve_target(config, args.peer), request, timeout=args.timeout)
    if args.json:
        out.write(json.dumps([m.to_json_dict() for m in result.matches], indent=1) + "\n")
    else:
        out.write(table(result.matches, request.returned()))
        out.write(summary(result) + "\n")
    if result.outcome.succeeded:
        return 0
    if args.json:
        (errors or out).write(f"edge-agent: {summary(result)}\n")
    return 1


def request_from(args: argparse.Namespace) -> FindRequest:
    """The FindRequest the options describe."""
    model = args.model or Model.STUDY_ROOT
    default = Level.PATIENT if model is Model.PATIENT_ROOT else Level.STUDY
    level = Level(args.level) if args.level else default
    return FindRequest(model, level, parse_keys(args.keys), only=args.only)


def table(matches: Sequence[Dataset], keys: Sequence[Key]) -> str:
    """The answers as aligned columns, one row per match."""
    columns = [key for key in keys if key.keyword not in HIDDEN]
    rows = [[cell(match, key) for key in columns] for match in matches]
    heads = [key.keyword for key in columns]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(heads)]
    lines = [
        "  ".join(text.ljust(w) for text, w in zip(line, widths, strict=True)).rstrip()
        for line in [heads, *rows]
    ]
    return "\n".join(lines) + "\n" if rows else ""


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
