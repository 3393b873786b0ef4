"""``edge-agent clock``: whether the running agent trusts the system clock, and why."""

from __future__ import annotations

import argparse
import json

from agent.cli.common import load_config
from agent.ops.clock import clock_report
from agent.ops.locate import locate

NAME = "clock"
HELP = "show whether the system clock is synchronised, plausible and trusted, and its last jump"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--json`` for scripts."""
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    """Print the running agent's judgement of the clock; exit 0 whatever it is."""
    report = clock_report(locate(load_config(args)).layout)
    print(json.dumps(report.to_json(), indent=1) if args.json else "\n".join(report.lines()))
    return 0
