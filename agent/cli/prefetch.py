"""``edge-agent prefetch PATIENT_ID [--from PEER]``: fetch a patient's priors by hand."""

from __future__ import annotations

import argparse

from agent.cli.common import load_config
from agent.ops.prefetch import queue_prefetch

NAME = "prefetch"
HELP = (
    "queue a fetch of a patient's prior studies from the PACS (the running agent does it, "
    "after what waits to be forwarded); 'edge-agent queue' shows it"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``PATIENT_ID [--from PEER]``."""
    parser.add_argument("patient_id", metavar="PATIENT_ID", help="the patient's ID (exact)")
    parser.add_argument(
        "--from", dest="peer", metavar="PEER",
        help="the peer to fetch from (default: the first [[prefetch]] rule's priors_from)",
    )


def run(args: argparse.Namespace) -> int:
    """Queue the job and say so; the agent's prefetch worker runs it."""
    queued = queue_prefetch(load_config(args), args.patient_id, args.peer)
    print("\n".join(queued.lines()))
    return 0
