"""``edge-agent find PEER [-P|-S|-O] [-L LEVEL] -k Key=Value ...``: what does the peer hold?"""

from __future__ import annotations

import argparse
import sys

from agent.cli.common import load_config
from agent.config import Config
from agent.ops.arguments import FIND_HELP, add_find_arguments, find_request
from agent.ops.find import FindReport, find_on_peer

NAME = "find"
HELP = FIND_HELP


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """PEER, model, level, keys, output."""
    add_find_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Query, print, exit 0 on success (or warning), 1 on a failure status.

    With ``--json`` a failure is told on stderr, keeping stdout JSON.
    """
    report = result(args, load_config(args))
    print("\n".join(report.json_lines() if args.json else report.lines()))
    if report.succeeded:
        return 0
    if args.json:
        print(f"edge-agent: {report.summary}", file=sys.stderr)
    return 1


def result(args: argparse.Namespace, config: Config) -> FindReport:
    """The C-FIND the options describe, run on their peer."""
    return find_on_peer(config, args.peer, find_request(args), timeout=args.timeout)
