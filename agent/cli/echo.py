"""``edge-agent echo PEER``: is this peer there, and does it accept us?"""

from __future__ import annotations

import argparse

from agent.cli.common import load_config
from agent.config import Config
from agent.ops.echo import EchoResult, echo_peer

NAME = "echo"
HELP = "send a C-ECHO to a configured peer or to AET@HOST:PORT"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The peer to echo."""
    parser.add_argument(
        "peer", metavar="PEER", help="a peer name from the config, or AET@HOST:PORT"
    )


def run(args: argparse.Namespace) -> int:
    """Print the round trip, or fail with the reason (PeerError exits 1 in main)."""
    print("\n".join(result(args, load_config(args)).lines()))
    return 0


def result(args: argparse.Namespace, config: Config) -> EchoResult:
    """The C-ECHO this command reports."""
    return echo_peer(config, args.peer)
