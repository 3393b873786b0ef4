"""The clock report: what the running agent judges of the system clock
(``agent.timekeeping``), read from its published status as ``status`` reads it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent.archive import Layout
from agent.procfs import process_alive
from agent.status import Snapshot
from agent.status_file import LIVE_STATES, read_published
from agent.status_parts import ClockState
from agent.timekeeping import jump_words


@dataclass(frozen=True)
class ClockReport:
    """The clock as the running agent judged it at its last tick (None: no agent runs)."""

    clock: ClockState | None
    written_at: str | None = None  # when the agent published it

    @property
    def running(self) -> bool:
        """Whether an agent answers for this data directory."""
        return self.clock is not None

    def to_json(self) -> dict[str, Any]:
        """The report as ``edge-agent clock --json`` prints it."""
        if self.clock is None:
            return {"running": False}
        return {"running": True, "synchronised": self.clock.synchronised,
                "plausible": self.clock.plausible, "trusted": self.clock.trusted,
                "why": self.clock.why, "last_jump": self.clock.last_jump,
                "last_jump_seconds": self.clock.last_jump_seconds,
                "doubt": self.clock.doubt(), "judged_at": self.written_at}

    def lines(self) -> list[str]:
        """The report as text, as the CLI prints it and the console shows it."""
        clock = self.clock
        if clock is None:
            return ["agent         not running: the running agent judges the clock"]
        return [
            f"synchronised  {_synchronised(clock.synchronised)}",
            f"plausible     {'yes' if clock.plausible else f'no: {clock.why}'}",
            f"trusted       {_trusted(clock)}",
            f"last jump     {_jump(clock)}",
        ]


def _synchronised(value: bool | None) -> str:
    if value is None:
        return "cannot tell (no adjtimex, no systemd-timesyncd)"
    return "yes" if value else "no: no time source has set the clock (NTP, chrony)"


def _trusted(clock: ClockState) -> str:
    if clock.trusted:
        return "yes"
    return "no: age-based retention waits, arrivals are flagged"


def _jump(clock: ClockState) -> str:
    if clock.last_jump is None or clock.last_jump_seconds is None:
        return "none since the agent started"
    return f"{jump_words(clock.last_jump_seconds)} at {clock.last_jump}"


def clock_report(layout: Layout, live: Snapshot | None = None) -> ClockReport:
    """The clock as the agent serving ``layout`` judges it: ``live`` is its own model
    (the console); otherwise the snapshot it last published is read."""
    if live is not None:
        return ClockReport(live.clock)
    published = read_published(layout.run_dir)
    if published is None or not _is_live(published):
        return ClockReport(None)
    return ClockReport(ClockState.from_json(published.get("clock")),
                       published.get("written_at"))


def clock_line(clock: ClockState) -> str:
    """The clock in one line, for ``edge-agent status``."""
    doubt = clock.doubt()
    if doubt is not None:
        return f"clock     NOT TRUSTED: {doubt.removeprefix('clock ')} (edge-agent clock)"
    return f"clock     {'synchronised, ' if clock.synchronised else ''}trusted"


def _is_live(published: dict[str, Any]) -> bool:
    state = published.get("state")
    return state in LIVE_STATES and process_alive(int(published.get("pid", 0)))
