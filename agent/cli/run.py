"""``edge-agent run``: serve until SIGTERM or Ctrl-C; SIGHUP reloads the configuration."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from types import FrameType

from agent import config as config_module
from agent.cli.common import load_config
from agent.errors import ConfigError, ConfigErrors
from agent.field.box import BoxAgent

NAME = "run"
HELP = "run the agent in the foreground (what the systemd service runs)"
EXIT_RESTART = 75  # EX_TEMPFAIL: the console asked for a restart; Restart=on-failure does it
log = logging.getLogger(__name__)


class Requests:
    """What signals and the console asked of the main thread, and an event to wake it."""

    def __init__(self) -> None:
        self.wake = threading.Event()
        self.stop = False
        self.restart = False
        self.reload = False

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        """SIGHUP asks for a reload, SIGTERM and SIGINT for a stop."""
        if signum == signal.SIGHUP:
            self.reload = True
        else:
            log.info("received %s, stopping", signal.Signals(signum).name)
            self.stop = True
        self.wake.set()

    def on_restart(self) -> None:
        """The serial console's 'restart yes'."""
        log.warning("restart asked for on the serial console; exiting with %d", EXIT_RESTART)
        self.restart = self.stop = True
        self.wake.set()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options beyond the common ones."""


def run(args: argparse.Namespace) -> int:
    """Start the agent, serve until asked to stop, reload on SIGHUP, stop in order."""
    config = load_config(args)
    requests = Requests()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, requests.on_signal)
    agent = BoxAgent(config, on_restart=requests.on_restart)
    try:
        agent.start()
        where = config.source or "built-in default configuration"
        log.info("serving from %s; data in %s", where, config.agent.data_dir)
        while not requests.stop:
            requests.wake.wait()
            requests.wake.clear()
            if requests.reload and not requests.stop:
                requests.reload = False
                reload(agent, args)
    finally:
        agent.close()
    return EXIT_RESTART if requests.restart else 0


def reload(agent: BoxAgent, args: argparse.Namespace) -> None:
    """Read the configuration again and apply it; a broken file leaves the running one."""
    try:
        new = config_module.load(args.config)
    except ConfigError as exc:
        reason = exc.one_line() if isinstance(exc, ConfigErrors) else str(exc)
        log.error("reload refused, still running the previous configuration: %s", reason)
        agent.status.error(f"reload refused: {reason}", part="configuration")
        return
    agent.reload(new)  # it logs what changed and what waits for a restart
