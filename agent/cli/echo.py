"""``edge-agent echo PEER``: is this peer there, and does it accept us?"""

from __future__ import annotations

import argparse

from agent.cli.common import load_config
from agent.net.scu import echo, resolve_target

NAME = "echo"
HELP = "send a C-ECHO to a configured peer or to AET@HOST:PORT"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The peer to echo."""
    parser.add_argument(
        "peer", metavar="PEER", help="a peer name from the config, or AET@HOST:PORT"
    )


def run(args: argparse.Namespace) -> int:
    """Print the round trip, or fail with the reason (PeerError exits 1 in main)."""
    config = load_config(args)
    target = resolve_target(config, args.peer)
    seconds = echo(config, target)
    print(f"OK {target} answered C-ECHO in {seconds * 1000:.0f} ms")
    return 0
