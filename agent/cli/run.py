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
EXIT_RESTART = 75  # EX_TEMPFAIL: the console asked for a restart; Restart=on-failure does it
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
    restart = threading.Event()

    def request_restart() -> None:
        log.warning("restart asked for on the serial console; exiting with %d", EXIT_RESTART)
        restart.set()
        stop.set()

    agent = Agent(config, on_restart=request_restart)
    try:
        agent.start()
        where = config.source or "built-in default configuration"
        log.info("serving from %s; data in %s", where, config.agent.data_dir)
        stop.wait()
    finally:
        agent.close()
    return EXIT_RESTART if restart.is_set() else 0
