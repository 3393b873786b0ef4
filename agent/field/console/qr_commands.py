"""The console's ``find`` and ``retrieve``: the CLI's options, the shared operations.

Retrieved instances land in the running agent.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, NoReturn

from agent.errors import UsageError
from agent.field.console.render import commit_reply, find_reply, retrieve_reply
from agent.field.console.table import Args, Command, Reply, parse_syntax
from agent.ops.arguments import (
    COMMIT_HELP,
    FIND_HELP,
    RETRIEVE_HELP,
    add_commit_arguments,
    add_find_arguments,
    add_retrieve_arguments,
    find_request,
    retrieve_request,
)
from agent.ops.commit import commit_study
from agent.ops.find import find_on_peer
from agent.ops.retrieve import retrieve_from
from agent.ops.running import RunningAgent
from agent.pull import Landing


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


def qr_commands(agent: RunningAgent) -> list[Command]:
    """Console commands for find, retrieve (landing in this agent) and commit."""

    def find(args: argparse.Namespace) -> Reply:
        config = agent.config
        report = find_on_peer(config, args.peer, find_request(args), timeout=args.timeout)
        return find_reply(report, as_json=args.json)

    def lands(serve: bool) -> AbstractContextManager[Landing]:
        return contextlib.nullcontext(agent.landing())  # its Storage SCP serves a C-MOVE

    def retrieve(args: argparse.Namespace) -> Reply:
        report = retrieve_from(
            agent.config,
            args.peer,
            retrieve_request(args),
            method=args.method or "move",
            lands=lands,
            send_to=args.send_to,
            timeout=args.timeout,
        )
        return retrieve_reply(report)

    def commit(args: argparse.Namespace) -> Reply:
        report = commit_study(agent.config, args.peer, args.study, args.timeout, lands=lands)
        return commit_reply(report)

    return [
        _command("find", FIND_HELP, add_find_arguments, find),
        _command("retrieve", RETRIEVE_HELP, add_retrieve_arguments, retrieve),
        _command("commit", COMMIT_HELP, add_commit_arguments, commit),
    ]


def _command(
    name: str,
    summary: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], Reply],
) -> Command:
    """A console command taking ``PEER [OPTION...]`` parsed as the CLI parses them."""
    parser = _ConsoleParser(prog=name, add_help=False)
    add_arguments(parser)

    def handler(args: Args) -> Reply:
        return run(parser.parse_args([args["peer"], *shlex.split(args.get("option", ""))]))

    details = parser.format_help().splitlines()
    return parse_syntax(f"{name} PEER [OPTION...]", summary, handler, details)
