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


class _OwnWords(logging.Filter):
    """Keeps pynetdicom's lines out of a command's output: the command reports failures
    in its own words. A filter on this handler only: the loggers are not muted."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Pass everything but pynetdicom's records below CRITICAL."""
        return not record.name.startswith("pynetdicom") or record.levelno >= logging.CRITICAL


def setup_logging(*, verbose: bool = False, own_words: bool = False) -> None:
    """Log to stderr: journald-style under systemd, timestamped otherwise. Once per process.

    ``own_words``: a command that is not the agent leaves pynetdicom's lines out of its
    output (unless ``verbose``); the agent (``run``) writes them to the journal.
    """
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"
            )
        )
    if own_words and not verbose:
        handler.addFilter(_OwnWords())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


def load_config(args: argparse.Namespace) -> Config:
    """The configuration named by ``--config`` or found in the usual places; its log level
    takes effect (the handler set up by ``setup_logging`` stays)."""
    config = config_module.load(args.config)
    if not args.verbose:
        logging.getLogger().setLevel(_LEVELS.get(config.agent.log_level, logging.INFO))
    return config


def fail(message: str, code: int) -> int:
    """Print a one-line reason to stderr and return the exit status."""
    print(f"edge-agent: {message}", file=sys.stderr)
    return code
