"""What every subcommand shares: loading the config, logging, reporting failure."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from agent import config as config_module
from agent.config import Config

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
# sd-daemon(3) priority prefixes: journald files each line under its level
_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class _JournalFormatter(logging.Formatter):
    """``<6>agent.net.scp: message``: journald adds the time and reads the priority."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6)
        return f"<{priority}>{record.name}: {super().format(record)}"


def setup_logging(*, verbose: bool = False, level: str = "info") -> None:
    """Log to stderr: journald-style under systemd, timestamped otherwise."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"
            )
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else _LEVELS.get(level, logging.INFO))


def load_config(args: argparse.Namespace) -> Config:
    """The configuration named by ``--config`` or found in the usual places."""
    config = config_module.load(args.config)
    if not args.verbose:
        setup_logging(level=config.agent.log_level)
    return config


def fail(message: str, code: int) -> int:
    """Print a one-line reason to stderr and return the exit status."""
    print(f"edge-agent: {message}", file=sys.stderr)
    return code
