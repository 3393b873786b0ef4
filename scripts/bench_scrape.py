"""The cost of one /metrics scrape: time and memory allocated to build the text, from a
status model with N destinations (each with queue, deliveries and a delivery histogram).

A scrape reads one snapshot of the status model and the histograms, never the index, so
the archive's size does not enter; the number of destinations (labels) does.

    .venv/bin/python scripts/bench_scrape.py --destinations 20 --scrapes 2000
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc

from prometheus_client import CollectorRegistry, generate_latest

from agent.metrics.collector import StatusCollector
from agent.status import State, StatusModel


def model(destinations: int) -> StatusModel:
    """A serving agent's model with ``destinations`` busy destinations."""
    status = StatusModel()
    status.set_state(State.SERVING)
    now = time.time()
    names = tuple(f"PACS{n:02d}" for n in range(destinations))
    for name in names:
        status.forwarded(name, 0.05)
        status.forward_failed(name, "refused")
    status.queue_depth({name: {"pending": 50, "retrying": 2} for name in names}, names,
                       {name: (50 * 500_000, now - 120) for name in names})
    status.refused("disk full", 0xA700)
    status.association_rejected("unknown-ae")
    status.disk(10 * 2**30, False, floor=2**30, full_in=86400.0)
    for _ in range(100):
        status.timings.cstore.observe(0.03)
        status.timings.cfind.observe(0.02)
    return status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--destinations", type=int, default=20)
    parser.add_argument("--scrapes", type=int, default=2000)
    args = parser.parse_args()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(model(args.destinations)))
    text = generate_latest(registry)
    times = []
    for _ in range(args.scrapes):
        started = time.perf_counter()
        generate_latest(registry)
        times.append(time.perf_counter() - started)
    tracemalloc.start()
    generate_latest(registry)
    _current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"{args.destinations} destinations: {len(text)} bytes of text, "
          f"{len(text.splitlines())} lines")
    print(f"one scrape: median {statistics.median(times) * 1e3:.2f} ms, "
          f"p99 {sorted(times)[int(len(times) * 0.99)] * 1e3:.2f} ms (of {args.scrapes})")
    print(f"memory allocated at once during one scrape (peak): {peak / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
