#!/usr/bin/env python3
"""The bandwidth cap, measured: the agent forwards to DCMTK storescp with
``max_bytes_per_second`` set, and the rate at which bytes reach storescp over --seconds
(20) is compared with the cap (the issue: within 10 %).

    python scripts/bench_bandwidth.py [--caps 1000000,4000000,10000000] [--seconds 20]
        [--associations 2] [--size 512] [--workdir DIR]

For each cap: a real agent (``edge-agent run``, its forwarding process) takes a series by
storescu and forwards it, over --associations lanes sharing the cap, to storescp on
loopback (``--fork``: an association each). Once storescu is done (the agent's ingest no
longer competes for the two cores), the bytes storescp has written are sampled every
0.1 s; the rate is the bytes written over the next --seconds, divided by them. The
series holds more than the cap lets through meanwhile, so the queue never runs dry. The
agent is then stopped with its queue still full (the throttled sends end at once; the
rest wait).
"""

from __future__ import annotations

import argparse
import math
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

# this tree's agent (not whichever one the interpreter has installed), then scripts/
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import dicomgen
from bench.clients import dcmtk_env, storescu
from bench.peers import EdgeAgent, StoreSCP, wait_for

WITHIN = 0.10  # the bound: the measured rate within 10 % of the cap
SAMPLE = 0.1  # seconds between looks at storescp's directory


def written(directory: Path) -> int:
    """Bytes storescp has written so far (files being written count as far as they are)."""
    total = 0
    for path in directory.iterdir():
        try:
            total += path.stat().st_size
        except FileNotFoundError:  # renamed meanwhile
            continue
    return total


class ForkingStoreSCP(StoreSCP):
    """storescp serving each association in a child of its own (``--fork``): plain
    storescp takes one at a time, so a second lane would wait for the first's release."""

    def command(self) -> list[str]:
        command = super().command()
        return [command[0], "--fork", *command[1:]]


def peer_tables(port: int, cap: int, associations: int) -> str:
    return (f'\n[peers.PACS]\nae_title = "{StoreSCP.ae_title}"\nhost = "127.0.0.1"\n'
            f"port = {port}\nmax_bytes_per_second = {cap}\n"
            f'\n[forward]\nto = ["PACS"]\nassociations = {associations}\n')


def measure_one(cap: int, series: Path, seconds: float, associations: int,
                workdir: Path) -> dict[str, float]:
    """The rate at storescp over ``seconds`` from its first byte, forwarding at ``cap``."""
    with ExitStack() as stack:
        scp = stack.enter_context(ForkingStoreSCP(workdir / "storescp"))
        agent = stack.enter_context(EdgeAgent(workdir / "agent",
                                              peer_tables(scp.port, cap, associations)))
        out = scp.workdir / "out"
        sending = subprocess.Popen(storescu(agent.ae_title, agent.port, series),
                                   env=dcmtk_env(False), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        stack.callback(sending.wait)
        stack.callback(sending.kill)
        sending.wait(300)  # the series is in the agent: forwarding alone is measured
        wait_for(lambda: written(out) > 0, 120, "the first forwarded bytes at storescp")
        first, start = time.monotonic(), written(out)
        samples = [(0.0, start)]
        while samples[-1][0] < seconds:
            time.sleep(SAMPLE)
            samples.append((time.monotonic() - first, written(out)))
        elapsed, end = samples[-1]
    rate = (end - start) / elapsed
    return {"cap": cap, "rate": rate, "ratio": rate / cap, "seconds": elapsed,
            "bytes": end - start}


def measure(args: argparse.Namespace, workdir: Path) -> list[dict[str, float]]:
    """Every cap's figures; printed, and returned for bench_all.py."""
    caps = [int(c) for c in str(args.caps).split(",")]
    instance = args.size * args.size * 2
    count = args.count or math.ceil(
        max(caps) * (args.seconds + 15) / instance)
    series = workdir / "series"
    if not series.exists():
        print(f"making {count} instances of {args.size}x{args.size} CT...", flush=True)
        dicomgen.write_series(series, count, modality="CT", size=args.size)
    results = []
    for cap in caps:
        run = workdir / f"cap-{cap}"
        shutil.rmtree(run, ignore_errors=True)
        got = measure_one(cap, series, args.seconds, args.associations, run)
        results.append(got)
        verdict = "within" if abs(got["ratio"] - 1) <= WITHIN else "NOT within"
        print(f"cap {cap:>11,} B/s: {got['rate']:>13,.0f} B/s at storescp over"
              f" {got['seconds']:.1f} s ({got['bytes']:,} bytes), {got['ratio']:.3f} of the"
              f" cap: {verdict} {WITHIN:.0%}", flush=True)
        shutil.rmtree(run, ignore_errors=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--caps", default="1000000,4000000,10000000",
                        help="comma-separated caps in bytes per second")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--associations", type=int, default=2)
    parser.add_argument("--size", type=int, default=512, help="rows and columns of each image")
    parser.add_argument("--count", type=int, default=None,
                        help="instances (default: what the highest cap needs)")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-bandwidth-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        results = measure(args, workdir)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0 if all(abs(r["ratio"] - 1) <= WITHIN for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
