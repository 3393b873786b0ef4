"""``edge-agent commit PEER --study UID``: ask a peer for storage commitment by hand."""

from __future__ import annotations

import argparse

from agent.cli.common import load_config
from agent.config import Config
from agent.ops.commit import DEFAULT_TIMEOUT, CommitResult, commit_study

NAME = "commit"
HELP = "ask a peer for storage commitment of a study the archive holds, and show its report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The peer, the study, and how long to wait for the report."""
    parser.add_argument("peer", metavar="PEER", help="a peer name from the config")
    parser.add_argument("--study", required=True, metavar="UID", help="Study Instance UID")
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
        help=f"how long to wait for the report (default {DEFAULT_TIMEOUT:g})",
    )


def run(args: argparse.Namespace) -> int:
    """Print the report; exit 1 unless every instance was committed."""
    answer = result(args, load_config(args))
    print("\n".join(answer.lines()))
    return 0 if answer.ok else 1


def result(args: argparse.Namespace, config: Config) -> CommitResult:
    """The report this command shows."""
    return commit_study(config, args.peer, args.study, args.timeout)
