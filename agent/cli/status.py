"""``edge-agent status``: what the archive holds and what the running agent reports."""

from __future__ import annotations

import argparse
import builtins
import dataclasses
import functools
import json
import shutil
import sys
from typing import Any, TextIO

from agent.archive import Layout
from agent.archive.index import Counts, connect, read_counts
from agent.cli.common import load_config
from agent.config import Config
from agent.status import (
    Snapshot,
    certificate_days_left,
    certificate_warning,
    process_alive,
    read_published,
)

NAME = "status"
HELP = "show archive counts, free disk and whether the agent is serving"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--json`` for scripts."""
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def gather(layout: Layout, live: Snapshot | None = None) -> dict[str, Any]:
    """Everything ``status`` shows, from the index, the disk and the status model.

    ``live`` is the running agent's own model (the console); otherwise the snapshot
    that agent last published is read.
    """
    published = live.to_json() if live is not None else read_published(layout.run_dir)
    running = published is not None and (live is not None or _is_live(published))
    return {
        "data_dir": str(layout.root),
        "archive": dataclasses.asdict(_counts(layout)),
        "disk_free": shutil.disk_usage(layout.root).free if layout.root.exists() else None,
        "running": running,
        "agent": published if running else None,
    }


def _is_live(published: dict[str, Any]) -> bool:
    state = published.get("state")
    return state in ("starting", "serving", "stopping", "failed") and process_alive(
        int(published.get("pid", 0))
    )


def _counts(layout: Layout) -> Counts:
    if not layout.index_path.exists():
        return Counts(0, 0, 0, 0, 0, 0)
    conn = connect(layout.index_path, readonly=True)
    try:
        return read_counts(conn)
    finally:
        conn.close()


def run(args: argparse.Namespace) -> int:
    """Print the status; exit 0 whether or not the agent is running."""
    return execute(args, load_config(args), sys.stdout)


def execute(
    args: argparse.Namespace, config: Config, out: TextIO, *, live: Snapshot | None = None
) -> int:
    """The command's work, printing to ``out`` (the CLI's stdout or the serial console)."""
    info = gather(Layout(config.agent.data_dir), live)
    print = functools.partial(builtins.print, file=out)
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    counts = info["archive"]
    print(f"archive   {info['data_dir']}")
    print(
        f"          {counts['patients']} patients, {counts['studies']} studies, "
        f"{counts['series']} series, {counts['instances']} instances, "
        f"{_size(counts['bytes'])}"
    )
    if counts["conflicts"]:
        print(f"          {counts['conflicts']} conflicting copies kept aside (see conflicts/)")
    if info["disk_free"] is not None:
        print(f"disk      {_size(info['disk_free'])} free")
    agent = info["agent"]
    if agent is None:
        print("agent     not running")
        return 0
    print(
        f"agent     {agent['state']} on {agent['listening']} (pid {agent['pid']}, "
        f"since {agent['started_at']})"
    )
    print(
        f"          {agent['received']} received this run, {agent['refused']} refused, "
        f"{agent['associations']} associations open"
    )
    if agent.get("forwarder_pid"):
        print(f"forward   sent by the forwarding process (pid {agent['forwarder_pid']})")
    for destination in agent.get("destinations", []):
        print(
            f"forward   {destination['name']}: {destination['pending']} pending, "
            f"{destination['retrying']} retrying, {destination['quarantined']} quarantined; "
            f"last success {destination['last_success'] or 'never'}"
        )
        if destination["last_error"]:
            print(f"          last error {destination['last_error']}")
    if agent.get("below_floor"):
        print("          FREE SPACE BELOW THE FLOOR: new images are refused")
    if agent.get("certificate_expires"):
        print(f"tls       {_certificate(agent['certificate_expires'])}")
    if agent.get("last_error"):
        print(f"          last error: {agent['last_error']}")
    return 0


def _certificate(expires: str) -> str:
    """The TLS certificate's expiry line, with a warning from 30 days before."""
    left = certificate_days_left(expires)
    line = f"certificate valid until {expires[:10]} ({left} days left)"
    warning = certificate_warning(expires)
    return f"{line}; {warning.upper()}: renew it" if warning else line


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"
