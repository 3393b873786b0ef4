"""``edge-agent run``: serve until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from types import FrameType

from agent.app import Agent
from agent.cli.common import load_config

NAME = "run"
HELP = "run the agent in the foreground (what the systemd service runs)"
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options beyond the common ones."""


def run(args: argparse.Namespace) -> int:
    """Start the agent, wait for a stop signal, stop in order."""
    config = load_config(args)
    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    agent = Agent(config)
    try:
        agent.start()
        where = config.source or "built-in default configuration"
        log.info("serving from %s; data in %s", where, config.agent.data_dir)
        stop.wait()
    finally:
        agent.close()
    return 0
