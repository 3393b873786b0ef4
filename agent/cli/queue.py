"""``edge-agent queue``: what waits to be forwarded, and re-arming or purging it."""

from __future__ import annotations

import argparse
import builtins
import functools
import sys
import time
from typing import TextIO

from agent.archive import Layout
from agent.archive.index import Index
from agent.archive.outbox import PENDING, QUARANTINED, RETRYING, Outbox, QueueRow
from agent.cli.common import load_config
from agent.config import Config
from agent.errors import AgentError

NAME = "queue"
HELP = "list forward jobs per destination; 'retry' re-arms them, 'purge' drops quarantined"
SHOWN = 50


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``queue [retry ID...|--all] | [purge --yes]``."""
    parser.add_argument("action", nargs="?", choices=("list", "retry", "purge"), default="list")
    parser.add_argument("ids", nargs="*", type=int, metavar="ID", help="job ids to re-arm")
    parser.add_argument("--all", action="store_true", help="re-arm every waiting job")
    parser.add_argument("--yes", action="store_true", help="purge without asking")


def run(args: argparse.Namespace) -> int:
    """List, re-arm or purge; changes take effect at the senders' next look (seconds)."""
    return execute(args, load_config(args), sys.stdout)


def execute(args: argparse.Namespace, config: Config, out: TextIO) -> int:
    """The command's work, printing to ``out`` (the CLI's stdout or the serial console)."""
    layout = Layout(config.agent.data_dir)
    if not layout.index_path.exists():
        out.write("queue empty (no archive yet)\n")
        return 0
    with Index(layout.index_path) as index:
        outbox = Outbox(index)
        if args.action == "retry":
            return _retry(outbox, args, out)
        if args.action == "purge":
            return _purge(outbox, args.yes, out)
        _print(outbox.depth(), outbox.listing(SHOWN), out)
    return 0


def _retry(outbox: Outbox, args: argparse.Namespace, out: TextIO) -> int:
    if not args.ids and not args.all:
        raise AgentError("say which jobs: queue retry ID [ID...] or queue retry --all")
    count = outbox.rearm(time.time(), None if args.all else args.ids)
    out.write(f"OK re-armed {count} jobs\n")
    return 0


def _purge(outbox: Outbox, confirmed: bool, out: TextIO) -> int:
    waiting = sum(d.get(QUARANTINED, 0) for d in outbox.depth().values())
    if not confirmed:
        if not sys.stdin.isatty():
            raise AgentError(f"purge drops {waiting} quarantined jobs for good; add --yes")
        answer = input(
            f"Drop {waiting} quarantined jobs for good? Their files may then be "
            "removed by retention. Type 'yes': "
        )
        if answer.strip().lower() != "yes":
            out.write("nothing purged\n")
            return 1
    count = outbox.purge_quarantined()
    out.write(f"OK purged {count} quarantined jobs\n")
    return 0


def _print(depth: dict[str, dict[str, int]], rows: list[QueueRow], out: TextIO) -> None:
    print = functools.partial(builtins.print, file=out)
    if not depth:
        print("queue empty: everything was delivered")
        return
    now = time.time()
    for destination, counts in sorted(depth.items()):
        summary = ", ".join(f"{counts.get(s, 0)} {s}" for s in (PENDING, RETRYING, QUARANTINED))
        print(f"{destination}: {summary}")
        for row in (r for r in rows if r.destination == destination):
            when = (
                "due now" if row.next_attempt <= now else f"next in {row.next_attempt - now:.0f} s"
            )
            if row.state == QUARANTINED:
                when = "quarantined"
            error = f"  last error: {row.last_error}" if row.last_error else ""
            print(
                f"  #{row.pk:<6} {row.state:11} {when:16} tries {row.attempts}"
                f"  {row.sop_instance_uid}{error}"
            )
