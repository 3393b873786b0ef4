"""``edge-agent studies``: which studies are arriving, which are complete and why."""

from __future__ import annotations

import argparse
import json

from agent.archive import Layout
from agent.cli.common import load_config
from agent.config import Config
from agent.ops.studies import StudiesListing, studies

NAME = "studies"
HELP = "list arriving and recently complete studies: counts, why complete, what is missing"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--json`` for scripts, ``--phi`` to show patient names, ``--all`` for every study."""
    parser.add_argument("--json", action="store_true", help="print a JSON list, one per study")
    parser.add_argument("--phi", action="store_true", help="show the patient's name")
    parser.add_argument("--all", action="store_true", help="every study, not only recent ones")


def run(args: argparse.Namespace) -> int:
    """Print the listing; exit 0."""
    listing = result(args, load_config(args))
    print(json.dumps(listing.to_json(), indent=1) if args.json else "\n".join(listing.lines()))
    return 0


def result(args: argparse.Namespace, config: Config) -> StudiesListing:
    """The listing this command prints."""
    return studies(Layout(config.agent.data_dir), phi=args.phi, every=args.all)
