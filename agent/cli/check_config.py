"""``edge-agent check-config``: validate the configuration and summarise it."""

from __future__ import annotations

import argparse

from agent.cli.common import load_config

NAME = "check-config"
HELP = "validate the configuration file and print what it sets up"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options beyond the common ones."""


def run(args: argparse.Namespace) -> int:
    """Exit 0 with a summary if the configuration is valid (errors exit 2 in main)."""
    config = load_config(args)
    agent = config.agent
    print(f"OK {config.source or 'built-in default'}")
    print(f"  AE title {agent.ae_title}, listening on {agent.bind}:{agent.port}")
    print(f"  data in {agent.data_dir} (refuse new images below {agent.min_free_mb} MB free)")
    if agent.allow_unknown:
        print(f"  unknown AEs may: {', '.join(sorted(agent.allow_unknown))}")
    else:
        print("  unknown AEs are rejected")
    for peer in config.peers.values():
        allowed = ", ".join(sorted(peer.allow)) or "nothing"
        print(f"  peer {peer.name}: {peer.ae_title}@{peer.host}:{peer.port} may {allowed}")
    return 0
