"""``edge-agent queue``: what waits to be forwarded, and re-arming or purging it."""

from __future__ import annotations

import argparse
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
)

NAME = "queue"
HELP = "list forward jobs per destination; 'retry' re-arms them, 'purge' drops quarantined"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``queue [retry ID...|--all] | [purge --yes]``."""
    parser.add_argument("action", nargs="?", choices=("list", "retry", "purge"), default="list")
    parser.add_argument("ids", nargs="*", type=int, metavar="ID", help="job ids to re-arm")
    parser.add_argument("--all", action="store_true", help="re-arm every waiting job")
    parser.add_argument("--yes", action="store_true", help="purge without asking")


def run(args: argparse.Namespace) -> int:
    """List, re-arm or purge; changes take effect at the senders' next look (seconds)."""
    config = load_config(args)
    if args.action == "purge" and not args.yes and not _confirmed(Layout(config.agent.data_dir)):
        print("nothing purged")
        return 1
    outcome = result(args, config)
    if isinstance(outcome, QueueChange) and not outcome.ok and outcome.archive:
        raise AgentError(outcome.summary)  # exit 1: a job named that is not there
    print("\n".join(outcome.lines()))
    return 0


def result(args: argparse.Namespace, config: Config) -> QueueListing | QueueChange:
    """The listing, or what a retry or (confirmed) purge changed."""
    layout = Layout(config.agent.data_dir)
    if args.action == "retry":
        if not args.ids and not args.all:
            raise AgentError("say which jobs: queue retry ID [ID...] or queue retry --all")
        return retry_jobs(layout, None if args.all else args.ids)
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
