"""Reusing the CLI from the console: ``status``, ``queue``, ``find`` and ``retrieve``.

Each CLI module has ``execute(args, config, out) -> int`` that prints to ``out``; the
console hands it a buffer, so both show exactly the same thing.
"""

from __future__ import annotations

import argparse
import io
import shlex
from types import ModuleType
from typing import TYPE_CHECKING, Any, NoReturn

from agent.config import Config
from agent.errors import UsageError

if TYPE_CHECKING:
    from agent.app import Agent

from agent.field.console.table import Args, Command, Reply, err, ok, parse_syntax


def run_cli(
    module: ModuleType, config: Config, *, extra: dict[str, Any] | None = None, **options: Any
) -> tuple[int, list[str]]:
    """Run a CLI subcommand's ``execute`` for this config; its exit status and lines.

    ``options`` are the parsed command line; ``extra`` goes to ``execute`` as keywords.
    """
    out = io.StringIO()
    status = int(module.execute(argparse.Namespace(**options), config, out, **(extra or {})))
    return status, out.getvalue().splitlines()


class _ConsoleParser(argparse.ArgumentParser):
    """argparse that raises instead of printing and exiting."""

    def error(self, message: str) -> NoReturn:
        """Bad arguments: UsageError with the usage line."""
        raise UsageError(f"{message} ({self.format_usage().strip()})")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        """``--help`` and friends: stop parsing."""
        raise UsageError(message or self.format_usage().strip())

    def print_help(self, file: Any = None) -> None:
        """``--help``: stop with the help text as the error (the console shows it)."""
        raise UsageError(self.format_help())


def qr_commands(agent: Agent) -> list[Command]:
    """Console commands for the CLI's find and retrieve (retrieve lands in this agent)."""
    from agent.cli import find as find_cli  # the CLI imports the agent: import late
    from agent.cli import retrieve as retrieve_cli

    return [
        _qr_command("find", find_cli, agent, {}),
        _qr_command("retrieve", retrieve_cli, agent, {"agent": agent}),
    ]


def _qr_command(name: str, module: ModuleType, agent: Agent, extra: dict[str, Any]) -> Command:
    parser = _ConsoleParser(prog=name, add_help=False)
    module.add_arguments(parser)

    def handler(args: Args) -> Reply:
        argv = [args["peer"], *shlex.split(args.get("option", ""))]
        parsed = parser.parse_args(argv)
        out = io.StringIO()
        status = int(module.execute(parsed, agent.config, out, **extra))
        lines = out.getvalue().splitlines()
        if status == 0:
            return ok(body=lines)
        return err(lines[-1] if lines else f"{name} failed (status {status})", lines[:-1])

    summary = str(getattr(module, "HELP", name))
    details = parser.format_help().splitlines()
    return parse_syntax(f"{name} PEER [OPTION...]", summary, handler, details)
