"""``edge-agent metrics``: whether the running agent serves its metrics endpoint, where,
whether a token is needed, and when it was last scraped."""

from __future__ import annotations

import argparse
import json

from agent.cli.common import load_config
from agent.ops.locate import locate
from agent.ops.metrics import metrics_report

NAME = "metrics"
HELP = "show whether the metrics endpoint is on, where, and when it was last scraped"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--json`` for scripts."""
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    """Print the report; exit 0 whether the endpoint is on or off."""
    config = load_config(args)
    report = metrics_report(config, locate(config).layout)
    print(json.dumps(report.to_json(), indent=1) if args.json else "\n".join(report.lines()))
    return 0
