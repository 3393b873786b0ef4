"""``edge-agent retrieve PEER -k StudyInstanceUID=UID [--series UID ...] [--move|--get]``."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable

from agent.cli.common import load_config
from agent.cli.landing import landing
from agent.cli.progress import ProgressReport
from agent.config import Config
from agent.ops.arguments import RETRIEVE_HELP, add_retrieve_arguments, retrieve_request
from agent.ops.retrieve import RetrieveReport, retrieve_from
from agent.qr import Progress

NAME = "retrieve"
HELP = RETRIEVE_HELP


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """PEER, keys, series, method, where to push afterwards."""
    add_retrieve_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Retrieve with a progress bar on stderr; exit 1 if anything failed."""
    progress = ProgressReport(sys.stderr)
    try:
        report = result(args, load_config(args), on_progress=progress)
    finally:
        progress.finish()
    print("\n".join(report.lines()))
    return 0 if report.succeeded else 1


def result(
    args: argparse.Namespace,
    config: Config,
    *,
    on_progress: Callable[[Progress], None] = lambda progress: None,
) -> RetrieveReport:
    """The retrieve the options describe, landing beside the running agent or alone."""
    return retrieve_from(
        config,
        args.peer,
        retrieve_request(args),
        method=args.method or "move",
        lands=functools.partial(landing, config),
        send_to=args.send_to,
        on_progress=on_progress,
        timeout=args.timeout,
    )
