#!/usr/bin/env python3
"""What the index's sync costs per received instance: ``Archive.ingest`` of small instances.

    python scripts/bench_sync.py [--count 600] [--size 16] [--workdir DIR]

Three archives side by side, each instance ingested into one after the other (the order
rotating), so that the load of a busy machine falls on all three alike:

- normal: every commit unsynced (``synchronous=NORMAL``, as the index ran before);
- as built: the agent's own choice (only a new instance's row skips its sync);
- full: every commit synced, the new instance's row too.

Prints the mean, median and 10th percentile of one ingest (fsync of the file, rename,
directory sync, index commit) per variant. The workdir should be on the disk the
archive would use.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

# this tree's agent (not whichever one the interpreter has installed), then scripts/
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import dicomgen
from pydicom import dcmread

from agent.archive.archive import Archive
from agent.archive.index import Index

VARIANTS = {"normal": False, "as built": None, "full": True}
_transaction = Index.transaction
_forced: list[bool | None] = [None]


def _forced_transaction(self: Index, *, synced: bool = True) -> AbstractContextManager[object]:
    """``Index.transaction`` with the sync the variant being measured forces."""
    forced = _forced[0]
    return _transaction(self, synced=synced if forced is None else forced)


def measure(count: int, size: int, workdir: Path) -> dict[str, list[float]]:
    """Milliseconds per ingest, per variant."""
    sent = dicomgen.write_series(workdir / "sent", count, size=size)
    headers = [(path, dcmread(path, stop_before_pixels=True)) for path in sent]
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    Index.transaction = _forced_transaction  # type: ignore[assignment,method-assign]
    archives = {name: Archive(workdir / name.replace(" ", "-")) for name in VARIANTS}
    try:
        for number, (path, header) in enumerate(headers):
            for name in _rotated(list(VARIANTS), number):
                _forced[0] = VARIANTS[name]
                archive = archives[name]
                incoming = archive.layout.tmp_dir / path.name
                shutil.copyfile(path, incoming)
                start = time.perf_counter()
                archive.ingest(incoming, sop_class_uid=str(header.SOPClassUID),
                               sop_instance_uid=str(header.SOPInstanceUID), calling_ae="BENCH")
                times[name].append((time.perf_counter() - start) * 1000)
    finally:
        for archive in archives.values():
            archive.close()
        Index.transaction = _transaction  # type: ignore[method-assign]
    return times


def _rotated(names: list[str], number: int) -> Iterator[str]:
    shift = number % len(names)
    yield from names[shift:] + names[:shift]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=600, help="instances per variant")
    parser.add_argument("--size", type=int, default=16, help="rows and columns per image")
    parser.add_argument("--workdir", type=Path, help="where the archives go (default: a temp dir)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-sync-", dir=args.workdir))
    try:
        times = measure(args.count, args.size, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for name, values in times.items():
        ordered = sorted(values)
        print(f"{name:9s} mean {statistics.mean(values):6.3f} ms  median "
              f"{statistics.median(values):6.3f} ms  p10 {ordered[len(ordered) // 10]:6.3f} ms"
              f"  ({len(values)} ingests)")


if __name__ == "__main__":
    main()
