"""A destination's pace, as configured: its bandwidth cap, its send windows and which
studies may bypass them (issue 24, step 4).

```toml
[peers.PACS]
max_bytes_per_second = 10_000_000       # a token bucket over the bytes written, all lanes
send_windows = ["22:00-06:00"]          # local time; a window may cross midnight
priority = { Modality = "CT", StudyDescription = "*STROKE*" }   # sent outside the windows
```

The windows are local wall-clock times (``HH:MM``, ``24:00`` as an end), start included,
end excluded; ``"22:00-06:00"`` crosses midnight. The priority rule matches like
``[[forward.rules]]``' ``match`` (``*`` and ``?``, case-sensitive, every pattern must
match), but on the attributes the index keeps (``PRIORITY_KEYS``): it is evaluated when a
sender looks for jobs, so a reload re-evaluates it for every job still waiting.

What the windows do is in ``agent.forward.windows``, the bucket in ``agent.forward.bandwidth``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from agent import validation as v
from agent.errors import ConfigError
from agent.reloading import LIVE

MINUTES_A_DAY = 24 * 60
_WINDOW = re.compile(r"^(\d{2}):(\d{2})-(\d{2}):(\d{2})$")

# Attributes the index keeps at the study, series and instance levels, single-valued
# text: a priority rule matches on these (agent/archive/priority.py holds their columns;
# tests/test_bandwidth_windows.py holds the two equal).
PACE_KEYS = ("max_bytes_per_second", "send_windows", "priority")  # a peer's keys here
PRIORITY_KEYS = frozenset({
    "AccessionNumber", "StudyDescription", "StudyID", "ReferringPhysicianName",
    "Modality", "SeriesDescription", "BodyPartExamined", "ProtocolName", "StationName",
    "InstitutionName", "SOPClassUID",
})


@dataclass(frozen=True)
class Window:
    """One daily send window, in minutes after local midnight: ``start`` included, ``end``
    excluded; an ``end`` not after ``start`` crosses midnight."""

    start: Annotated[int, LIVE]
    end: Annotated[int, LIVE]

    def contains(self, minute: float) -> bool:
        """True if ``minute`` (after local midnight, fractions allowed) is inside."""
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end

    def __str__(self) -> str:
        return f"{_hhmm(self.start)}-{_hhmm(self.end)}"


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def parse_window(text: str, key: str) -> Window | None:
    """``"22:00-06:00"`` as a Window; ConfigError (through ``validation.problem``) naming
    ``key`` and None if it is not one."""
    found = _WINDOW.match(text.strip())
    if found is None:
        v.problem(ConfigError(key, f"{text!r} is not a window like \"22:00-06:00\""))
        return None
    h1, m1, h2, m2 = (int(part) for part in found.groups())
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if h1 > 23 or m1 > 59 or m2 > 59 or end > MINUTES_A_DAY:
        v.problem(ConfigError(key, f"{text!r}: hours are 00-23 (24:00 only as an end),"
                                   " minutes 00-59"))
        return None
    if start == end % MINUTES_A_DAY:
        v.problem(ConfigError(key, f"{text!r} starts where it ends (for all day, leave"
                                   " send_windows out)"))
        return None
    return Window(start, end)


def parse_pace(table: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A peer's pace keys (``where``: ``peers.NAME``), as keyword arguments of ``Peer``."""
    windows = v.get(table, f"{where}.send_windows", list, [], None)
    parsed = []
    for i, text in enumerate(windows):
        key = f"{where}.send_windows[{i}]"
        if not isinstance(text, str):
            v.problem(ConfigError(key, "a window is a string like \"22:00-06:00\""))
            continue
        window = parse_window(text, key)
        if window is not None:
            parsed.append(window)
    return {
        "max_bytes_per_second": _cap(table, where),
        "send_windows": tuple(parsed),
        "priority": _priority(table, where, bool(windows)),
    }


def _cap(table: Mapping[str, Any], where: str) -> int | None:
    if "max_bytes_per_second" not in table:
        return None
    return v.get(table, f"{where}.max_bytes_per_second", int, 0, v.at_least(1)) or None


def _priority(table: Mapping[str, Any], where: str, windows: bool) -> tuple[tuple[str, str], ...]:
    """The priority rule as (keyword, pattern) pairs, sorted; it needs send windows."""
    key = f"{where}.priority"
    rule = v.get(table, key, dict, {}, None)
    if rule and not windows:
        v.problem(ConfigError(key, "bypasses send windows: set send_windows too"))
    for keyword, pattern in rule.items():
        if keyword not in PRIORITY_KEYS:
            v.problem(ConfigError(f"{key}.{keyword}", "is not an attribute a priority rule"
                                  f" can match (one of {', '.join(sorted(PRIORITY_KEYS))})"))
        if not isinstance(pattern, str):
            v.problem(ConfigError(f"{key}.{keyword}", "a pattern is a string"))
    return tuple(sorted((k, p) for k, p in rule.items()
                        if k in PRIORITY_KEYS and isinstance(p, str)))
