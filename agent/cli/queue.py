"""``edge-agent queue``: what waits to be forwarded, and re-arming or purging it."""

from __future__ import annotations

import argparse
import json
import sys

from agent.archive import Layout
from agent.cli.common import load_config
from agent.config import Config
from agent.errors import AgentError
from agent.ops.queue import (
    QueueChange,
    QueueListing,
    list_queue,
    purge_jobs,
    quarantined,
    retry_jobs,
    split_targets,
)

NAME = "queue"
HELP = (
    "list forward jobs and MPPS messages per destination; 'retry' re-arms them, 'purge' "
    "drops quarantined jobs"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``queue [--json] [retry ID...|DEST...|--all] | [purge --yes]``."""
    parser.add_argument("action", nargs="?", choices=("list", "retry", "purge"), default="list")
    parser.add_argument(
        "ids", nargs="*", metavar="ID|DEST",
        help="job ids to re-arm, or destinations (peer names) whose jobs and MPPS messages "
        "to re-arm",
    )
    parser.add_argument("--all", action="store_true", help="re-arm every waiting job")
    parser.add_argument("--yes", action="store_true", help="purge without asking")
    parser.add_argument("--json", action="store_true", help="print the listing as JSON")


def run(args: argparse.Namespace) -> int:
    """List, re-arm or purge; changes take effect at the senders' next look (seconds)."""
    config = load_config(args)
    if args.action == "purge" and not args.yes and not _confirmed(Layout(config.agent.data_dir)):
        print("nothing purged")
        return 1
    outcome = result(args, config)
    if isinstance(outcome, QueueChange) and not outcome.ok and outcome.archive:
        raise AgentError(outcome.summary)  # exit 1: a job named that is not there
    if args.json and isinstance(outcome, QueueListing):
        print(json.dumps(outcome.to_json(), indent=1))
    else:
        print("\n".join(outcome.lines()))
    return 0


def result(args: argparse.Namespace, config: Config) -> QueueListing | QueueChange:
    """The listing, or what a retry or (confirmed) purge changed."""
    layout = Layout(config.agent.data_dir)
    if args.action == "retry":
        if not args.ids and not args.all:
            raise AgentError(
                "say which jobs: queue retry ID [ID...], queue retry DEST, or queue retry --all"
            )
        if args.all:
            return retry_jobs(layout, None)
        ids, destinations = split_targets(args.ids, config.peers)
        return retry_jobs(layout, ids, destinations)
    if args.action == "purge":
        return purge_jobs(layout)
    return list_queue(layout)


def _confirmed(layout: Layout) -> bool:
    """Ask on the terminal before a purge; AgentError when there is no terminal to ask."""
    waiting = quarantined(layout)
    if waiting is None:
        return True  # no archive: nothing to drop, purge_jobs says so
    if not sys.stdin.isatty():
        raise AgentError(f"purge drops {waiting} quarantined jobs for good; add --yes")
    answer = input(
        f"Drop {waiting} quarantined jobs for good? Their files may then be "
        "removed by retention. Type 'yes': "
    )
    return answer.strip().lower() == "yes"
