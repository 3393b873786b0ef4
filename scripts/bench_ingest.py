#!/usr/bin/env python3
"""Ingest benchmark: a CT series sent by DCMTK storescu over one association into the
agent, DCMTK's storescp and Orthanc, with the sender's Nagle on and off, in one run;
then the agent's peak memory while it receives one very large instance.

    python scripts/bench_ingest.py [--count 500] [--size 512] [--repeat 3] [--big-mb 1024]

Targets (issue 2): the agent's ingest time no more than Orthanc's with Nagle on and off;
peak RSS of the agent under 80 MB while it receives a 1 GB instance.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dicomgen
from bench.peers import DCMTK, EdgeAgent, Orthanc, Receiver, StoreSCP, peak_rss_mb

RECEIVERS: dict[str, type[Receiver]] = {"edge-agent": EdgeAgent, "storescp": StoreSCP,
                                        "Orthanc": Orthanc}
RSS_TARGET_MB = 80.0


def send(receiver: Receiver, source: Path, nagle: bool) -> float:
    """Send a directory over one association; seconds until the last response."""
    env = dict(os.environ)
    env.pop("TCP_NODELAY", None)
    if not nagle:
        env["TCP_NODELAY"] = "1"
    command = [str(DCMTK / "storescu"), "-aet", "BENCH", "-aec", receiver.ae_title, "+sd",
               "127.0.0.1", str(receiver.port), str(source)]
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"storescu into {receiver.name} failed: {result.stderr[-500:]}")
    return elapsed


def run_once(kind: str, workdir: Path, source: Path, count: int, nagle: bool) -> float:
    """One timed send into a fresh receiver; checks every instance arrived."""
    target = workdir / f"{kind}-{'nagle' if nagle else 'nodelay'}-{time.monotonic_ns()}"
    with RECEIVERS[kind](target) as receiver:
        seconds = send(receiver, source, nagle)
        received = receiver.count()
    shutil.rmtree(target, ignore_errors=True)
    if received != count:
        raise RuntimeError(f"{kind} holds {received} of {count} instances")
    return seconds


def ingest_table(workdir: Path, source: Path, count: int, repeat: int
                 ) -> dict[tuple[str, bool], float]:
    """Median seconds per (receiver, nagle); receivers interleaved within each round."""
    times: dict[tuple[str, bool], list[float]] = {}
    for round_number in range(repeat):
        for nagle in (True, False):
            for kind in RECEIVERS:
                seconds = run_once(kind, workdir, source, count, nagle)
                times.setdefault((kind, nagle), []).append(seconds)
                print(f"  round {round_number + 1}: {kind:10} nagle {'on ' if nagle else 'off'}"
                      f" {seconds:7.2f} s", flush=True)
    return {key: statistics.median(values) for key, values in times.items()}


def big_instance_rss(workdir: Path, size_mb: int) -> tuple[float, float]:
    """Peak RSS (MB) of a fresh agent before and after receiving one huge instance."""
    big = dicomgen.large_instance(workdir / "big.dcm", size_mb * 1048576)
    target = workdir / "agent-big"
    with EdgeAgent(target) as agent:
        assert agent.proc is not None
        before = peak_rss_mb(agent.proc.pid)
        send(agent, big, nagle=False)
        after = peak_rss_mb(agent.proc.pid)
        if agent.count() != 1:
            raise RuntimeError("the large instance did not arrive")
    shutil.rmtree(target, ignore_errors=True)
    big.unlink()
    return before, after


def report(medians: dict[tuple[str, bool], float], count: int) -> None:
    """Print times, rates and ratios with a verdict per target."""
    print(f"\n{'receiver':12} {'nagle on':>16} {'nagle off':>16}")
    for kind in RECEIVERS:
        cells = [f"{medians[(kind, n)]:6.2f} s {count / medians[(kind, n)]:5.0f}/s"
                 for n in (True, False)]
        print(f"{kind:12} {cells[0]:>16} {cells[1]:>16}")
    for nagle in (True, False):
        label = "on " if nagle else "off"
        agent = medians[("edge-agent", nagle)]
        versus_orthanc = agent / medians[("Orthanc", nagle)]
        versus_storescp = agent / medians[("storescp", nagle)]
        verdict = "target met" if versus_orthanc <= 1.0 else "NOT met"
        print(f"nagle {label}: agent/Orthanc {versus_orthanc:.2f} ({verdict}),"
              f" agent/storescp {versus_storescp:.2f}")


def main() -> None:
    """Parse options, generate data, run, report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--big-mb", type=int, default=1024)
    parser.add_argument("--skip-big", action="store_true")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        source = workdir / "series"
        dicomgen.write_series(source, args.count, modality="CT", size=args.size)
        print(f"{args.count} CT instances of {args.size}x{args.size}, one association,"
              f" median of {args.repeat}")
        medians = ingest_table(workdir, source, args.count, args.repeat)
        report(medians, args.count)
        if not args.skip_big:
            before, after = big_instance_rss(workdir, args.big_mb)
            verdict = "target met" if after < RSS_TARGET_MB else "NOT met"
            print(f"agent peak RSS: {before:.0f} MB idle, {after:.0f} MB after receiving one"
                  f" {args.big_mb} MB instance (target < {RSS_TARGET_MB:.0f} MB: {verdict})")
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
