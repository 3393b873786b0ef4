"""The status model as a file: the running agent publishes its snapshot to
``run/status.json`` so that another process (``edge-agent status``, ``ports``' holder
check) reads the same model, and tells a hung agent by the file's age.

The age is measured on the monotonic clock (the same for every process of one boot, and
unmoved by a jump of the system clock: set back a year, the wall clock would show a hung
agent's file as fresh for a year); the wall time is written too, to be shown, and is
the age's measure only across a reboot or for a file that has no monotonic time."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path
from typing import Any

from agent.status import STUCK_AFTER, Snapshot, not_answering

STATUS_FILE = "status.json"
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")  # which boot a monotonic time counts from
# states in which a process is (or should be) there to write the file
LIVE_STATES = ("starting", "serving", "stopping", "failed")


def publish(
    snapshot: Snapshot, run_dir: Path, now: float | None = None, uptime: float | None = None
) -> None:
    """Write the snapshot atomically where ``edge-agent status`` will read it, with the
    time it was written (``now``, epoch seconds; ``uptime``, the monotonic clock's, the
    real one's unless a wall time alone is given): its age tells a hung agent."""
    written = time.time() if now is None else now
    data = {**snapshot.to_json(), "written_at": _iso(written)}
    uptime = time.monotonic() if uptime is None and now is None else uptime
    if uptime is not None:
        data.update(written_uptime=uptime, boot_id=boot_id())
    target = run_dir / STATUS_FILE
    temporary = target.with_suffix(".tmp")
    temporary.write_text(json.dumps(data, indent=1))
    os.replace(temporary, target)  # readers see the old file or the new one, never half


def read_published(
    run_dir: Path, now: float | None = None, uptime: float | None = None
) -> dict[str, Any] | None:
    """The last snapshot a running agent published, or None if there is none; one older
    than STUCK_AFTER from a live state reads as not answering, as the live model would.
    ``now``/``uptime``: the wall and monotonic clocks to age it by (the real ones; a
    wall time given alone is the only one used)."""
    try:
        data = json.loads((run_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    uptime = time.monotonic() if uptime is None and now is None else uptime
    silent = age(data, time.time() if now is None else now, uptime)
    for internal in ("written_uptime", "boot_id"):  # for the age alone: not shown
        data.pop(internal, None)
    if data.get("state") in LIVE_STATES and silent is not None and silent > STUCK_AFTER:
        verdict = not_answering(silent)
        data.update(verdict, state=verdict["state"].value)
    return data


def age(published: dict[str, Any], now: float, uptime: float | None = None) -> float | None:
    """Seconds since the file was written (None if it does not say: an older agent's): by
    the monotonic clock if it was written in this boot, else by the wall clock."""
    written_uptime, boot = published.get("written_uptime"), boot_id()
    same_boot = boot is not None and published.get("boot_id") == boot
    if uptime is not None and same_boot and isinstance(written_uptime, (int, float)):
        return max(0.0, uptime - written_uptime)
    try:
        written = dt.datetime.fromisoformat(str(published["written_at"])).timestamp()
    except (KeyError, ValueError):
        return None
    return max(0.0, now - written)  # a clock set back: as fresh as can be told


def boot_id() -> str | None:
    """This boot's id (None where the kernel does not say)."""
    try:
        return BOOT_ID.read_text().strip() or None
    except OSError:
        return None


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).isoformat(timespec="milliseconds")
