"""``edge-agent preview DEST FILE``: what DEST would receive of FILE (issue 25)."""

from __future__ import annotations

import argparse
from pathlib import Path

from agent.cli.common import load_config
from agent.ops.preview import preview

NAME = "preview"
HELP = "show what a destination would receive of a DICOM file: the attributes changed"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The destination and the file."""
    parser.add_argument("destination", metavar="DEST", help="a peer name from the config")
    parser.add_argument("file", metavar="FILE", type=Path, help="a DICOM file")


def run(args: argparse.Namespace) -> int:
    """Print the differences, one attribute a line; 1 if the instance would be held."""
    result = preview(load_config(args), args.destination, args.file)
    print("\n".join(result.lines()))
    return 1 if result.held else 0
