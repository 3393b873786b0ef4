"""``edge-agent retrieve PEER -k StudyInstanceUID=UID [--series UID ...] [--move|--get]``."""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, TextIO

from agent.cli.common import load_config
from agent.cli.landing import landing
from agent.cli.qr_args import ProgressReport, add_common
from agent.config import Config
from agent.dicom.models import Model
from agent.net.scu import resolve_target
from agent.pull import Landing, PullResult, check_pull, pull
from agent.qr import RetrieveRequest
from agent.qr.identifiers import parse_keys
from agent.qr.retrieve import Method

if TYPE_CHECKING:
    from agent.app import Agent

NAME = "retrieve"
HELP = "pull a study (or some series) from a peer into the local archive, by C-MOVE or C-GET"
SHOWN_FAILURES = 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """PEER, keys, series, method, where to push afterwards."""
    add_common(parser)
    parser.set_defaults(timeout=60.0)
    parser.add_argument(
        "--series", nargs="+", default=[], metavar="UID", help="only these series of the study"
    )
    methods = parser.add_mutually_exclusive_group()
    methods.add_argument(
        "--move",
        dest="method",
        action="store_const",
        const="move",
        help="C-MOVE to this agent's own Storage SCP (the default; the peer must know us)",
    )
    methods.add_argument(
        "--get",
        dest="method",
        action="store_const",
        const="get",
        help="C-GET: the images come back on the same association",
    )
    parser.add_argument(
        "--send-to",
        metavar="PEER",
        help="then queue what arrived for this peer (the modality, say)",
    )


def run(args: argparse.Namespace) -> int:
    """Retrieve with a progress bar on stderr; exit 1 if anything failed."""
    return execute(args, load_config(args), sys.stdout, progress_to=sys.stderr)


def execute(
    args: argparse.Namespace,
    config: Config,
    out: TextIO,
    *,
    agent: Agent | None = None,
    progress_to: TextIO | None = None,
) -> int:
    """The command's work, printing to ``out`` (the CLI's stdout or the serial console)."""
    request = RetrieveRequest(
        args.model or Model.STUDY_ROOT, parse_keys(args.keys), tuple(args.series)
    )
    report = ProgressReport(progress_to or out)
    target = resolve_target(config, args.peer)
    method: Method = args.method or "move"
    check_pull(config, target, method, args.send_to)
    lands: Callable[[bool], AbstractContextManager[Landing]] = (
        functools.partial(landing, config)
        if agent is None
        else lambda serve: contextlib.nullcontext(agent.landing())
    )
    started = time.monotonic()
    try:
        with lands(method == "move") as land:
            result = pull(
                config,
                target,
                request,
                method=method,
                land=land,
                send_to=args.send_to,
                on_progress=report,
                timeout=args.timeout,
            )
    finally:
        report.finish()
    for line in describe(result, time.monotonic() - started):
        out.write(line + "\n")
    return 0 if result.retrieved.complete else 1


def describe(result: PullResult, seconds: float) -> list[str]:
    """What happened, in a few lines: counts, the final status, failed instances, queueing."""
    got = result.retrieved
    how = f"C-{got.method.upper()}"
    lines = [
        f"{got.progress.completed} instances retrieved from {got.target} by {how} into "
        f"{result.landing} in {seconds:.1f} s; {got.progress.failed} failed, "
        f"{got.progress.warning} with warnings",
        f"final status: {got.outcome}",
    ]
    if got.failed_uids:
        shown = ", ".join(got.failed_uids[:SHOWN_FAILURES])
        more = len(got.failed_uids) - SHOWN_FAILURES
        lines.append(f"failed instances: {shown}" + (f" and {more} more" if more > 0 else ""))
    if result.send_to:
        when = (
            "edge-agent queue shows their progress"
            if result.landing in ("the running agent", "this agent")
            else "the agent is not running: they go once it runs"
        )
        lines.append(f"queued {result.queued} instances for {result.send_to} ({when})")
    return lines
