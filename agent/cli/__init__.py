"""The ``edge-agent`` command: one small module per subcommand.

Each module has ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``.
Exit status: 0 success, 1 the operation failed, 2 bad configuration or usage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType

from agent import __version__
from agent.cli import (
    check_config,
    clock,
    commit,
    echo,
    find,
    leds,
    metrics,
    prefetch,
    preview,
    queue,
    reindex,
    retrieve,
    run,
    status,
    studies,
)
from agent.cli.common import fail, setup_logging
from agent.errors import AgentError, ConfigError, UsageError
from agent.net import configure_pynetdicom

COMMANDS: tuple[ModuleType, ...] = (
    run,
    check_config,
    echo,
    status,
    metrics,
    reindex,
    queue,
    studies,
    find,
    retrieve,
    prefetch,
    leds,
    commit,
    clock,
    preview,
)
EXIT_FAILED = 1
EXIT_CONFIG = 2


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description="DICOM edge agent: receives a modality's images, keeps them, forwards them.",
    )
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        sub = commands.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        sub.add_argument(
            "--config",
            metavar="FILE",
            help="configuration file (default: $EDGE_AGENT_CONFIG, then "
            "/etc/edge-agent/agent.toml, then the built-in default)",
        )
        sub.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
        sub.add_argument(
            "--debug",
            action="store_true",
            help="log at debug level, and show the traceback of an unexpected failure",
        )
        module.add_arguments(sub)
        sub.set_defaults(handler=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script and of ``python -m agent``.

    Every failure ends in one line on stderr and an exit status; a traceback only with
    ``--debug``.
    """
    args = build_parser().parse_args(argv)
    args.verbose = args.verbose or args.debug
    setup_logging(verbose=args.verbose, own_words=args.command != run.NAME)
    try:
        configure_pynetdicom(debug=args.verbose)  # once: nothing later mutes it
        return int(args.handler(args))
    except (ConfigError, UsageError) as exc:
        return fail(str(exc), EXIT_CONFIG)
    except AgentError as exc:
        return fail(str(exc), EXIT_FAILED)
    except KeyboardInterrupt:
        return fail("interrupted", EXIT_FAILED)
    except Exception as exc:
        if args.debug:
            raise
        return fail(f"{unexpected(exc)} (--debug shows the traceback)", EXIT_FAILED)


def unexpected(exc: Exception) -> str:
    """An error nobody raised on purpose, in one line."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f" {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return f"unexpected {type(exc).__name__}: {exc}"


if __name__ == "__main__":
    sys.exit(main())
