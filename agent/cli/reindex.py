"""``edge-agent reindex``: rebuild the index from the archived files alone."""

from __future__ import annotations

import argparse

from agent.archive import Archive, Layout
from agent.archive.lock import DataDirLock
from agent.archive.recovery import rebuild
from agent.cli.common import load_config

NAME = "reindex"
HELP = "rebuild the SQLite index from the files (the agent must be stopped)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options beyond the common ones."""


def run(args: argparse.Namespace) -> int:
    """Rebuild under the data-dir lock, so a running agent is never pulled from under."""
    config = load_config(args)
    layout = Layout(config.agent.data_dir)
    layout.create()
    lock = DataDirLock(layout.run_dir)
    lock.acquire()
    try:
        with Archive(layout.root) as archive:
            result = rebuild(archive)
            counts = archive.counts()
    finally:
        lock.release()
    print(
        f"OK indexed {result.files_indexed} files ({result.files_unreadable} unreadable, "
        f"{result.temp_files_removed} temp files removed): {counts.patients} patients, "
        f"{counts.studies} studies, {counts.series} series, {counts.instances} instances"
    )
    return 0 if result.files_unreadable == 0 else 1
