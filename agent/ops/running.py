"""What the serial console needs from the running agent, and nothing more."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol

from agent.config import Config
from agent.pull import Landing
from agent.status import Snapshot


class StatusSource(Protocol):
    """The one status model, read only."""

    def snapshot(self) -> Snapshot:
        """The live state (``agent.status.StatusModel`` is one)."""


class RunningAgent(Protocol):
    """The running agent as the console sees it (``agent.app.Agent`` is one)."""

    @property
    def config(self) -> Config:
        """The configuration in force."""

    @property
    def status(self) -> StatusSource:
        """The one status model: ``status.snapshot()`` is the live state."""

    def reload(self, new: Config) -> list[str]:
        """Apply ``new`` where it can change live; return the keys that need a restart."""

    def landing(self) -> Landing:
        """Where retrieved instances land: this agent's archive, woken forwarder and SCP."""

    def pause_leds(self) -> AbstractContextManager[None]:
        """Free the status LEDs' pins while the block runs (``leds test``), then drive them."""
