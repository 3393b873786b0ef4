"""Small value types of the one status model: what the agent knows of the system clock,
and the metrics endpoint's state. Kept apart from ``agent/status.py``, which holds the
snapshot's fields and the methods that set them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClockState:
    """The system clock as the agent judges it (``agent.timekeeping``): synchronised (NTP
    or an RTC said so; None: cannot tell), plausible (not before the release, not before
    the newest arrival, no jump), and the last jump seen."""

    synchronised: bool | None = None
    plausible: bool = True
    # both, as far as the agent must know: age-based retention runs, arrivals are unflagged
    trusted: bool = True
    why: str | None = None  # why it is not plausible, in words
    last_jump: str | None = None  # ISO 8601 (UTC, by the clock after it) of the last jump
    last_jump_seconds: float | None = None  # how far, forward (+) or back (-)

    def doubt(self) -> str | None:
        """What is wrong with the clock, in a few words (None: it is trusted)."""
        if self.trusted:
            return None
        if not self.plausible:
            return f"clock implausible: {self.why}"
        if self.synchronised is None:
            return "clock not known to be synchronised"
        return "clock not synchronised"

    @classmethod
    def from_json(cls, data: object) -> ClockState:
        """The state as ``status.json`` holds it (a default one if it holds none)."""
        if not isinstance(data, dict):
            return cls()
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class MetricsState:
    """The metrics endpoint: where it listens (None: off) and when it was last scraped."""

    endpoint: str | None = None  # "http://127.0.0.1:9110", or https
    last_scrape: str | None = None  # ISO 8601, UTC
    scrapes: int = 0
