"""What Linux's /proc tells about other processes: their open files and command lines.

Used to say who holds a port and where a running agent keeps its data: an agent holds
its data directory's ``run/agent.lock`` open while it runs (agent.archive.lock). Another
user's processes cannot be looked into; they are simply not found.
"""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")
LOCK_FILE = "run/agent.lock"


def pids(proc: Path = PROC) -> list[int]:
    """Every process id /proc lists."""
    try:
        return sorted(int(entry.name) for entry in proc.iterdir() if entry.name.isdigit())
    except OSError:
        return []


def fd_targets(pid: int, proc: Path = PROC) -> list[str]:
    """What the process's open file descriptors point at (empty if we may not look)."""
    directory = proc / str(pid) / "fd"
    try:
        names = os.listdir(directory)
    except OSError:
        return []  # another user's process, or gone
    targets = []
    for name in names:
        try:
            targets.append(os.readlink(directory / name))
        except OSError:
            continue
    return targets


def agent_data_dir(pid: int, proc: Path = PROC) -> Path | None:
    """The data directory whose lock the process holds open (it is an edge-agent), if any."""
    for target in fd_targets(pid, proc):
        if target.endswith("/" + LOCK_FILE):
            return Path(target[: -len(LOCK_FILE) - 1])
    return None


def running_agents(proc: Path = PROC) -> list[tuple[int, Path]]:
    """(pid, data directory) of every process holding a data directory's lock."""
    found = []
    for pid in pids(proc):
        data_dir = agent_data_dir(pid, proc)
        if data_dir is not None:
            found.append((pid, data_dir))
    return found


def command_line(pid: int, proc: Path = PROC, width: int = 80) -> str:
    """The process's command line on one line, cut at ``width`` characters."""
    try:
        words = (proc / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return "command unknown"
    text = " ".join(" ".join(w.decode(errors="replace") for w in words).split())
    if not text:
        return "command unknown"
    return text[:width] + ("…" if len(text) > width else "")


def process_alive(pid: int) -> bool:
    """True if a process with this pid exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
