"""The serial console: line editor + command table + serial transport, in one object.

Commands run in the transport's reader thread, one at a time; every one is wrapped so a
failure is an ``ERR`` line and never reaches the DICOM side.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

from agent import __version__
from agent.field.console.commands import AgentCommands
from agent.field.console.config_commands import ConfigCommands
from agent.field.console.lineeditor import CRLF, Cancel, Echo, LineEditor, Submit
from agent.field.console.qr_commands import qr_commands
from agent.field.console.table import CommandTable, Reply, collect
from agent.field.console.transport import RETRY_EVERY, Opener, SerialTransport, open_port
from agent.field.settings import ConsoleSettings
from agent.ops.running import RunningAgent

log = logging.getLogger(__name__)

PROMPT = "edge> "


class SerialConsole:
    """A command line on a serial port for the field engineer; ``close()`` stops it."""

    def __init__(
        self,
        agent: RunningAgent,
        settings: ConsoleSettings,
        *,
        on_restart: Callable[[], None] | None = None,
        prompt: str = PROMPT,
        retry_every: float = RETRY_EVERY,
        opener: Opener = open_port,
    ) -> None:
        if settings.device is None:
            raise ValueError("console.device is not set")
        self.agent = agent
        self.prompt = prompt
        self.editor = LineEditor()
        self.table = build_table(agent, on_restart=on_restart)
        self.transport = SerialTransport(
            settings.device,
            settings.baud,
            on_connect=self._connected,
            on_data=self._received,
            retry_every=retry_every,
            opener=opener,
        )

    def start(self) -> None:
        """Start serving the port (it is opened whenever it exists)."""
        self.transport.start()

    def close(self) -> None:
        """Stop the reader thread and close the port."""
        self.transport.close()

    def __enter__(self) -> SerialConsole:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run_line(self, line: str) -> Reply:
        """Run one command line and return its answer (also usable without a port)."""
        return self.table.run_line(line)

    def _connected(self) -> None:
        self.editor.reset()
        config = self.agent.config
        banner = (
            f"edge-agent {__version__} console, AE {config.agent.ae_title} on "
            f"{socket.gethostname()}. Type 'help' for commands."
        )
        self._send(CRLF + banner.encode() + CRLF + self.prompt.encode())

    def _received(self, data: bytes) -> None:
        try:
            self._handle(data)
        except Exception:  # a bug here must not end the reader thread (or the agent)
            log.exception("console input handling failed")
            self.editor.reset()
            self._send(b"ERR internal error (logged)" + CRLF + self.prompt.encode())

    def _handle(self, data: bytes) -> None:
        for event in self.editor.feed(data):
            if isinstance(event, Echo):
                self._send(event.data)
            elif isinstance(event, Cancel):
                self._send(self.prompt.encode())
            elif isinstance(event, Submit):
                self._submit(event.line)

    def _submit(self, line: str) -> None:
        if not line.strip():
            self._send(self.prompt.encode())
            return
        reply = self.run_line(line)
        text = "\r\n".join(reply.lines()) + "\r\n" + self.prompt
        self._send(text.encode("utf-8", "replace"))
        if reply.then is not None:
            reply.then()

    def _send(self, data: bytes) -> None:
        self.transport.write(data)


def build_table(
    agent: RunningAgent, *, on_restart: Callable[[], None] | None = None
) -> CommandTable:
    """Every console command, find and retrieve included."""
    table = CommandTable()
    commands = AgentCommands(agent, table, on_restart=on_restart)
    for command in collect(commands, ConfigCommands(agent)):
        table.add(command)
    for command in qr_commands(agent):
        table.add(command)
    return table


def start_console(
    agent: RunningAgent, on_restart: Callable[[], None] | None = None
) -> SerialConsole | None:
    """Start the console if ``[console] device`` is set; None otherwise."""
    settings = agent.config.console
    if settings.device is None:
        return None
    console = SerialConsole(agent, settings, on_restart=on_restart)
    console.start()
    return console
