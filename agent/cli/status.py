"""``edge-agent status``: what the archive holds and what the running agent reports."""

from __future__ import annotations

import argparse
import json

from agent.cli.common import load_config
from agent.config import Config
from agent.ops.locate import locate
from agent.ops.status import StatusReport, status_report

NAME = "status"
HELP = "show archive counts, free disk, whether the agent is serving, and alerts"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--json`` for scripts."""
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    """Print the status; exit 0 whether or not the agent is running."""
    report = result(args, load_config(args))
    print(json.dumps(report.to_json(), indent=1) if args.json else "\n".join(report.lines()))
    return 0


def result(args: argparse.Namespace, config: Config) -> StatusReport:
    """The report this command prints, from the agent's published status (found where it
    runs when no configuration file says where)."""
    found = locate(config)
    return status_report(found.layout, note=found.note)
