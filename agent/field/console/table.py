"""The command table: each command is a method carrying its syntax line and summary.

As in aiosmtpd, the syntax line is the single source for ``help`` and for the error a
bad argument count gets. Syntax: leading lower-case words name the command, then
``ARG`` (required), ``[ARG]`` (optional), ``ARG...`` (the rest of the line, required)
or ``[ARG...]`` (the rest of the line, optional).

Every answer starts with ``OK`` or ``ERR <reason>`` on its first line; body lines
follow, each indented by two spaces, so a script can tell them apart.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from agent.errors import AgentError

log = logging.getLogger(__name__)

Args = dict[str, str]
Handler = Callable[[Args], "Reply"]
F = TypeVar("F", bound=Callable[..., Any])
_ATTRIBUTE = "__console_syntax__"


@dataclass(frozen=True)
class Reply:
    """An answer: OK or ERR, a first-line text and body lines."""

    ok: bool
    text: str = ""
    body: tuple[str, ...] = ()
    then: Callable[[], None] | None = field(default=None, compare=False)  # after it is sent
    result: object = field(default=None, compare=False)  # the agent/ops result it shows

    def lines(self) -> list[str]:
        """The answer as lines: ``OK text`` or ``ERR text``, then the body indented."""
        head = ("OK" if self.ok else "ERR") + (f" {self.text}" if self.text else "")
        body = [f"  {part}" for line in self.body for part in line.splitlines() or [""]]
        return [" ".join(head.splitlines()), *body]


def ok(text: str = "", body: Iterable[str] = (), *, result: object = None) -> Reply:
    """A success answer (``result``: the operation's result object it renders)."""
    return Reply(True, text, tuple(body), result=result)


def err(text: str, body: Iterable[str] = (), *, result: object = None) -> Reply:
    """A failure answer (``result``: the operation's result object it renders)."""
    return Reply(False, text, tuple(body), result=result)


class CommandError(AgentError, ValueError):
    """A command cannot do what was asked; the message becomes the ERR line."""


def syntax(line: str, summary: str) -> Callable[[F], F]:
    """Mark a method as a console command with its syntax line and one-line summary."""

    def mark(method: F) -> F:
        setattr(method, _ATTRIBUTE, (line, summary))
        return method

    return mark


@dataclass(frozen=True)
class Param:
    """One argument of a syntax line."""

    name: str
    optional: bool
    rest: bool


@dataclass(frozen=True)
class Command:
    """A command: its words, parameters, summary and handler."""

    words: tuple[str, ...]
    params: tuple[Param, ...]
    line: str
    summary: str
    handler: Handler
    details: tuple[str, ...] = field(default=())

    @property
    def usage(self) -> str:
        """``usage: <syntax line>``."""
        return f"usage: {self.line}"


def parse_syntax(line: str, summary: str, handler: Handler, details: Sequence[str] = ()) -> Command:
    """Build a Command from its syntax line."""
    tokens = line.split()
    words = tuple(t for t in tokens if re.fullmatch(r"[a-z][a-z-]*", t))
    params = []
    for token in tokens[len(words) :]:
        optional = token.startswith("[")
        name = token.strip("[]")
        rest = name.endswith("...")
        params.append(Param(name.rstrip(".").lower(), optional, rest))
    return Command(words, tuple(params), line, summary, handler, tuple(details))


def collect(*owners: object) -> list[Command]:
    """Every method marked with @syntax on these objects, in definition order."""
    commands = []
    for owner in owners:
        for name in type(owner).__dict__:
            marked = getattr(getattr(type(owner), name), _ATTRIBUTE, None)
            if marked is not None:
                line, summary = marked
                commands.append(parse_syntax(line, summary, getattr(owner, name)))
    return commands


class CommandTable:
    """Finds the command a line names, checks its arguments and runs it."""

    def __init__(self, commands: Iterable[Command] = ()) -> None:
        self.commands: list[Command] = []
        for command in commands:
            self.add(command)

    def add(self, command: Command) -> None:
        """Register a command (a later one with the same words replaces the earlier)."""
        self.commands = [c for c in self.commands if c.words != command.words]
        self.commands.append(command)

    def run_line(self, line: str) -> Reply:
        """Run one line; never raises: every failure is an ERR reply."""
        try:
            return self._dispatch(line)
        except (AgentError, ValueError, OSError) as exc:
            head, *rest = (str(exc) or type(exc).__name__).splitlines()
            return err(head, rest)  # several config errors: one a line
        except Exception as exc:  # a console command must never take the agent down
            log.exception("console command %r failed", line.split()[0] if line else "")
            return err(f"internal error: {type(exc).__name__}: {exc}")

    def _dispatch(self, line: str) -> Reply:
        spans = [(m.group(), m.start()) for m in re.finditer(r"\S+", line)]
        words = [text.lower() for text, _ in spans]
        command = self.find(words)
        if command is None:
            return self._unknown(words)
        args = _bind(command, line, spans[len(command.words) :])
        if args is None:
            return err(command.usage)
        return command.handler(args)

    def find(self, words: Sequence[str]) -> Command | None:
        """The command whose words are the longest prefix of ``words``."""
        matches = [c for c in self.commands if tuple(words[: len(c.words)]) == c.words]
        return max(matches, key=lambda c: len(c.words), default=None)

    def group(self, words: Sequence[str]) -> list[Command]:
        """Commands whose words start with ``words``."""
        return [c for c in self.commands if c.words[: len(words)] == tuple(words)]

    def _unknown(self, words: Sequence[str]) -> Reply:
        group = self.group(words[:1])
        if group:
            return err(f"usage: {' | '.join(c.line for c in group)}")
        return err(f"unknown command {words[0]!r}; type 'help' for the list")

    def help(self, words: Sequence[str]) -> Reply:
        """``help``: every command; ``help WORD...``: the commands starting with those words."""
        words = [w.lower() for w in words]
        chosen = self.group(words) if words else self.commands
        if not chosen:
            return err(f"no command {' '.join(words)!r}; type 'help' for the list")
        width = max(len(c.line) for c in chosen)
        body = [f"{c.line:<{width}}  {c.summary}" for c in chosen]
        if len(chosen) == 1:
            body += list(chosen[0].details)
        return ok(body=body)


def _bind(command: Command, line: str, spans: Sequence[tuple[str, int]]) -> Args | None:
    """Match the arguments after the command words to its parameters; None if they do not fit."""
    args: Args = {}
    for index, param in enumerate(command.params):
        if index >= len(spans):
            return args if param.optional else None
        if param.rest:
            args[param.name] = line[spans[index][1] :].strip()
            return args
        args[param.name] = spans[index][0]
    return args if len(spans) <= len(command.params) else None
