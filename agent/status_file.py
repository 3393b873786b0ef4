"""The status model as a file: the running agent publishes its snapshot to
``run/status.json`` so that another process (``edge-agent status``, ``ports``' holder
check) reads the same model, and tells a hung agent by the file's age."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path
from typing import Any

from agent.status import STUCK_AFTER, Snapshot, not_answering

STATUS_FILE = "status.json"
# states in which a process is (or should be) there to write the file
LIVE_STATES = ("starting", "serving", "stopping", "failed")


def publish(snapshot: Snapshot, run_dir: Path, now: float | None = None) -> None:
    """Write the snapshot atomically where ``edge-agent status`` will read it, with the
    time it was written (``now``, epoch seconds): its age tells a hung agent."""
    written = time.time() if now is None else now
    data = {**snapshot.to_json(), "written_at": _iso(written)}
    target = run_dir / STATUS_FILE
    temporary = target.with_suffix(".tmp")
    temporary.write_text(json.dumps(data, indent=1))
    os.replace(temporary, target)  # readers see the old file or the new one, never half


def read_published(run_dir: Path, now: float | None = None) -> dict[str, Any] | None:
    """The last snapshot a running agent published, or None if there is none; one older
    than STUCK_AFTER from a live state reads as not answering, as the live model would."""
    try:
        data = json.loads((run_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    silent = age(data, time.time() if now is None else now)
    if data.get("state") in LIVE_STATES and silent is not None and silent > STUCK_AFTER:
        verdict = not_answering(silent)
        data.update(verdict, state=verdict["state"].value)
    return data


def age(published: dict[str, Any], now: float) -> float | None:
    """Seconds since the file was written (None if it does not say: an older agent's)."""
    try:
        written = dt.datetime.fromisoformat(str(published["written_at"])).timestamp()
    except (KeyError, ValueError):
        return None
    return max(0.0, now - written)  # a clock set back: as fresh as can be told


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).isoformat(timespec="milliseconds")
