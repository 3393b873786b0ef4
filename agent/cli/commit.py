"""``edge-agent commit PEER --study UID``: ask a peer for storage commitment by hand."""

from __future__ import annotations

import argparse
import functools

from agent.cli.common import load_config
from agent.cli.landing import landing
from agent.config import Config
from agent.ops.arguments import COMMIT_HELP, add_commit_arguments
from agent.ops.commit import CommitResult, commit_study

NAME = "commit"
HELP = COMMIT_HELP


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The peer, the study, and how long to wait for the report."""
    add_commit_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Print the report; exit 1 unless every instance was committed."""
    answer = result(args, load_config(args))
    print("\n".join(answer.lines()))
    return 0 if answer.ok else 1


def result(args: argparse.Namespace, config: Config) -> CommitResult:
    """The report this command shows, taken by the running agent or, when none runs, by
    a temporary receiver in this process (as ``retrieve`` does)."""
    return commit_study(
        config, args.peer, args.study, args.timeout, lands=functools.partial(landing, config)
    )
