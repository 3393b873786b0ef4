#!/usr/bin/env python3
"""Forwarding benchmark: DCMTK storescu sends a CT series to the agent, which forwards it
to Orthanc; against storescu straight into Orthanc. Time until the last instance is in
Orthanc, in one run, median of --repeat rounds.

    python scripts/bench_forward.py [--count 500] [--size 512] [--repeat 3]

Target (issue 4): the path through the agent takes at most 1.2 times the direct path.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dicomgen
from bench.peers import EdgeAgent, Orthanc, wait_for
from bench_ingest import send

TARGET = 1.2


def direct(workdir: Path, source: Path, count: int, nagle: bool) -> float:
    """storescu straight into a fresh Orthanc."""
    with Orthanc(workdir / f"direct-{time.monotonic_ns()}") as orthanc:
        started = time.perf_counter()
        send(orthanc, source, nagle=nagle)
        wait_for(lambda: orthanc.count() >= count, 600, "Orthanc to hold the series")
        return time.perf_counter() - started


def through_agent(workdir: Path, source: Path, count: int, nagle: bool) -> float:
    """storescu into the agent, which forwards to a fresh Orthanc."""
    with Orthanc(workdir / f"pacs-{time.monotonic_ns()}") as orthanc:
        peers = (f'\n[peers.PACS]\nae_title = "ORTHANC"\nhost = "127.0.0.1"\n'
                 f'port = {orthanc.port}\n\n[forward]\nto = ["PACS"]\n')
        with EdgeAgent(workdir / f"agent-{time.monotonic_ns()}", peers) as agent:
            started = time.perf_counter()
            send(agent, source, nagle=nagle)
            wait_for(lambda: orthanc.count() >= count, 600, "the forwarded series")
            return time.perf_counter() - started


def report(workdir: Path, source: Path, args: argparse.Namespace, nagle: bool) -> None:
    """Both paths, alternately, with the sender's Nagle on or off; print the ratio."""
    times: dict[str, list[float]] = {"direct": [], "through agent": []}
    for _ in range(args.repeat):
        times["direct"].append(direct(workdir, source, args.count, nagle))
        times["through agent"].append(through_agent(workdir, source, args.count, nagle))
    medians = {path: statistics.median(values) for path, values in times.items()}
    ratio = medians["through agent"] / medians["direct"]
    verdict = "target met" if ratio <= TARGET else "NOT met"
    print(f"sender Nagle {'on ' if nagle else 'off'}: direct into Orthanc"
          f" {medians['direct']:6.2f} s, through the agent {medians['through agent']:6.2f} s,"
          f" ratio {ratio:.2f} (target <= {TARGET}: {verdict})", flush=True)


def main() -> None:
    """Generate, run both paths alternately, report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-forward-"))
    try:
        source = workdir / "series"
        dicomgen.write_series(source, args.count, size=args.size)
        print(f"{args.count} x {args.size}x{args.size} CT by storescu, median of {args.repeat}")
        for nagle in (True, False):
            report(workdir, source, args, nagle)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
