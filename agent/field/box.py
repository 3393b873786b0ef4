"""The agent as the box runs it: the core agent plus its status LEDs, serial console and
systemd notifications. ``edge-agent run`` builds this; everything else (a retrieve's
temporary agent, most tests) uses the bare ``agent.app.Agent``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from agent.app import Agent, Reporter
from agent.config import Config
from agent.field import logbuffer
from agent.field.console import SerialConsole, start_console
from agent.field.leds import StatusLeds
from agent.field.systemd import Notifier


class BoxReporter(Reporter):
    """Tells systemd what the agent does; closes the console as soon as stopping begins,
    so that no command reaches an agent that is taking itself apart."""

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier
        self.console: SerialConsole | None = None

    def ready(self, summary: str) -> None:
        """Startup or a reload is over."""
        self.notifier.ready(summary)

    def status(self, summary: str) -> None:
        """The one-line status changed."""
        self.notifier.status(summary)

    def watchdog(self) -> None:
        """Housekeeping proved the agent works."""
        self.notifier.watchdog()

    def reloading(self) -> None:
        """A reload begins."""
        self.notifier.reloading()

    def stopping(self) -> None:
        """Shutdown begins: tell systemd, then stop taking console commands."""
        self.notifier.stopping()
        if self.console is not None:
            self.console.close()
            self.console = None


class BoxAgent(Agent):
    """An ``Agent`` that also drives the status LEDs, serves the serial console and
    notifies systemd (each only where configured or present)."""

    def __init__(
        self,
        config: Config,
        *,
        on_restart: Callable[[], None] | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self._box = BoxReporter(notifier if notifier is not None else Notifier())
        super().__init__(config, reporter=self._box)
        self.on_restart = on_restart  # the serial console's 'restart yes' calls it
        self.leds: StatusLeds | None = None

    @property
    def console(self) -> SerialConsole | None:
        """The serial console while it serves."""
        return self._box.console

    def start(self) -> None:
        """LEDs first (they show "starting"), then the agent, then the console."""
        logbuffer.install()  # the console's 'logs' reads it
        self.leds = StatusLeds(self.status, self.config.leds)
        try:
            super().start()
        except BaseException:
            self._close_leds()
            raise
        self._box.console = start_console(self, self.on_restart)

    def close(self) -> None:
        """Stop the agent (the console closes as it begins), then the LEDs and notifier."""
        try:
            super().close()
        finally:
            self._close_leds()
            self._box.notifier.close()

    @contextlib.contextmanager
    def pause_leds(self) -> Iterator[None]:
        """Free the status LEDs' pins for the block (the console's LED test), then drive them."""
        running = self.leds
        if running is not None:
            running.close()
            self.leds = None
        try:
            yield
        finally:
            if running is not None:
                self.leds = StatusLeds(self.status, self.config.leds)

    def _close_leds(self) -> None:
        if self.leds is not None:
            self.leds.close()
            self.leds = None
