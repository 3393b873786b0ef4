"""Whether each destination can be reached, as the running agent reports it: one line per
destination that ``queue`` and ``status`` (CLI and console) print alike.

The state lives in the forwarding process (``agent.forward.gate``) and reaches the
status model; with no agent running nothing is known, and nothing is shown.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from agent.archive import Layout
from agent.procfs import process_alive
from agent.status import Snapshot
from agent.status_file import LIVE_STATES, read_published
from agent.words import duration_words


def reported_destinations(layout: Layout, live: Snapshot | None = None) -> dict[str, Any]:
    """The destinations the agent serving ``layout`` reports, by name, as plain JSON
    (its own model ``live`` in the console, else the status it published); empty when
    no agent runs."""
    published = live.to_json() if live is not None else read_published(layout.run_dir)
    if published is None or (live is None and not _alive(published)):
        return {}
    return {d["name"]: d for d in published.get("destinations", []) if isinstance(d, dict)}


def _alive(published: dict[str, Any]) -> bool:
    if published.get("state") not in LIVE_STATES:
        return False
    try:
        return process_alive(int(published.get("pid", 0)))
    except (TypeError, ValueError):
        return False


def state_line(destination: dict[str, Any], now: float) -> str:
    """``up``, or ``DOWN since T (for how long): why; next probe in N s``."""
    if destination.get("state", "up") != "down":
        return "up"
    since = destination.get("down_since")
    line = "DOWN"
    if since:
        line += f" since {since} (for {duration_words(now - _epoch(since))})"
    line += f": {destination.get('down_error') or 'cannot be reached'}"
    probe = destination.get("next_probe")
    if probe:
        left = _epoch(probe) - now
        line += f"; next probe in {duration_words(left)}" if left > 0 else "; probing now"
    return line + "; its jobs wait (not counted as failed tries)"


def _epoch(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


def pace_line(destination: dict[str, Any]) -> str | None:
    """How a destination's send windows and bandwidth cap stand, in words (None: it has
    neither): ``outside its send windows (22:00-06:00); opens at 22:00; its jobs wait
    (not counted as failed tries); throttled: sending at its cap of 10 MB/s``."""
    parts = []
    window = destination.get("window")
    if window:
        parts.append(window)
        if not destination.get("window_open", True):
            parts.append("its jobs wait (not counted as failed tries)")
    cap = destination.get("max_bytes_per_second")
    if cap and destination.get("throttled"):
        parts.append(f"throttled: sending at its cap of {rate_words(int(cap))}")
    elif cap:
        parts.append(f"capped at {rate_words(int(cap))} (not reached now)")
    return "; ".join(parts) or None


def rate_words(bytes_per_second: int) -> str:
    """``10 MB/s``, ``512 kB/s``, ``900 B/s`` (decimal units, as links are sold)."""
    if bytes_per_second >= 1_000_000:
        return f"{bytes_per_second / 1e6:g} MB/s"
    if bytes_per_second >= 1_000:
        return f"{bytes_per_second / 1e3:g} kB/s"
    return f"{bytes_per_second} B/s"
