"""Send windows: whether a destination's queue may be sent now, and when it may next.

Outside every window of a destination its jobs wait: they are not attempted, not counted
as failures, and nothing is lost; its senders sleep until the next window opens (looking
again every few seconds, so a reload, a wake-up or a change of the clock's trust is seen).
Jobs its ``priority`` rule matches go at any time.

Only on a trustworthy clock. While the clock judge (``agent.timekeeping``) does not trust
the system clock, the windows are ignored and the queue is sent, and the status says so:
an untrusted clock may be hours off (a box that booted at 1970, an RTC without battery),
so the windows would open at some unknown time anyway, and holding studies back for an
unknown time is worse than using the link in the daytime. The decision is the same
function in both processes: the forwarding process to send, the agent's to show it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from agent.forward.pace_settings import Window


@dataclass(frozen=True)
class WindowState:
    """Whether the queue may go now, why in words (None: the destination has no windows),
    and when the next window opens (epoch seconds; None while it may go)."""

    open: bool
    reason: str | None = None
    opens_at: float | None = None


ALWAYS = WindowState(True)


def window_state(windows: Sequence[Window], now: float, trusted: bool) -> WindowState:
    """The state at ``now`` (epoch seconds; the windows are in local time)."""
    if not windows:
        return ALWAYS
    listed = ", ".join(str(w) for w in windows)
    if not trusted:
        return WindowState(True, f"send windows ({listed}) ignored: the clock is not trusted")
    local = dt.datetime.fromtimestamp(now)
    minute = local.hour * 60 + local.minute + (local.second + local.microsecond / 1e6) / 60
    inside = [w for w in windows if w.contains(minute)]
    if inside:
        return WindowState(True, f"inside its send window {inside[0]} (of {listed})")
    opens = next_opening(windows, local)
    return WindowState(
        False,
        f"outside its send windows ({listed}); opens at {opens:%H:%M}",
        opens.timestamp(),
    )


def next_opening(windows: Sequence[Window], local: dt.datetime) -> dt.datetime:
    """The first window start after ``local`` (a naive local time)."""
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    starts = []
    for window in windows:
        start = midnight + dt.timedelta(minutes=window.start)
        starts.append(start if start > local else start + dt.timedelta(days=1))
    return min(starts)
