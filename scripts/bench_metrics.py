#!/usr/bin/env python3
"""What the metrics endpoint costs, on a loaded box: one scrape of an agent holding
--studies x --per-study instances (100,000 by default) with --queued instances waiting
for a destination that is down, and the idle CPU of an agent scraped every --every
seconds, beside the same agent without the endpoint and Orthanc scraped as often.

    python scripts/bench_metrics.py [--studies 1000] [--per-study 100] [--queued 1000]
        [--scrapes 200] [--idle-seconds 180] [--every 15] [--workdir DIR]

    dev run:  python scripts/bench_metrics.py --studies 20 --per-study 10 --queued 50 \\
                  --scrapes 20 --idle-seconds 20 --every 5

Scrape cost: the agent runs in this process, so that one scrape's text can be built
under tracemalloc (peak bytes allocated while it is built) and timed on its own; it is
also timed as Prometheus sees it, over HTTP, against Orthanc's
/tools/metrics-prometheus (Orthanc holding the --queued instances). Idle: each agent
is its own process, CPU from /proc over the window (utime + stime, children included).
The loaded archive is made once (files, then `edge-agent reindex`) and kept in the
work directory; each agent gets a hard-linked copy of it.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import dicomgen
from bench import archive
from bench.clients import dcmtk_env
from bench.peers import DCMTK, TICKS, EdgeAgent, Orthanc, cpu_seconds, free_port, rss_mb, wait_for

from agent import config as config_module
from agent.app import Agent


def loaded_archive(workdir: Path, studies: int, per_study: int) -> Path:
    """The data directory of an indexed archive of studies x per_study instances."""
    template = workdir / f"template-{studies}x{per_study}"
    if not (template / "data" / "index.sqlite").exists():
        shutil.rmtree(template, ignore_errors=True)
        source = workdir / "source"
        shutil.rmtree(source, ignore_errors=True)
        started = time.perf_counter()
        archive.archive_files(source, studies, per_study)
        seconds = archive.load_agent(template, source)
        shutil.rmtree(source)
        print(f"made the archive: {studies * per_study} instances, "
              f"{time.perf_counter() - started:.0f} s (reindex {seconds:.0f} s)", flush=True)
    return template / "data"


def linked_copy(data: Path, target: Path) -> Path:
    """A hard-linked copy of a data directory (the index itself copied: it is written)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-al", str(data), str(target)], check=True)
    for name in ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm"):
        if (data / name).exists():
            (target / name).unlink()
            shutil.copy2(data / name, target / name)
    shutil.rmtree(target / "run", ignore_errors=True)
    return target


def storescu(port: int, ae_title: str, files: list[Path]) -> None:
    subprocess.run([str(DCMTK / "storescu"), "-aec", ae_title, "127.0.0.1", str(port),
                    *map(str, files)], check=True, capture_output=True, env=dcmtk_env())


def http_times(url: str, count: int) -> list[float]:
    """Seconds of ``count`` GETs of ``url``, one after another, each on a new connection."""
    times = []
    for _ in range(count):
        started = time.perf_counter()
        with urllib.request.urlopen(url, timeout=30) as answer:
            answer.read()
        times.append(time.perf_counter() - started)
    return times


def ms(values: list[float]) -> str:
    ordered = sorted(values)
    return (f"median {statistics.median(values) * 1e3:.2f} ms, "
            f"p95 {ordered[max(0, round(0.95 * len(ordered)) - 1)] * 1e3:.2f} ms")


def scrape_cost(args: argparse.Namespace, data: Path, runs: Path) -> dict[str, float]:
    """One scrape of the loaded agent with --queued waiting, against Orthanc's; printed,
    and the medians returned (seconds; peak allocation in bytes)."""
    root = runs / "scrape"
    mine = linked_copy(data, root / "data")
    port, metrics_port = free_port(), free_port()
    config_path = root / "agent.toml"
    config_path.write_text(
        f'[agent]\nae_title = "EDGE"\nport = {port}\nbind = "127.0.0.1"\n'
        f'data_dir = "{mine}"\nmin_free_mb = 0\nallow_unknown = ["echo", "store"]\n'
        f'[peers.DEAD]\nae_title = "DEAD"\nhost = "127.0.0.1"\nport = {free_port()}\n'
        f'[forward]\nto = ["DEAD"]\n[metrics]\nport = {metrics_port}\n'
    )
    files = dicomgen.write_series(root / "queued", args.queued, size=8)
    with Agent(config_module.load_file(config_path)) as agent:
        storescu(port, "EDGE", files)
        wait_for(lambda: any(d.waiting == args.queued
                             for d in agent.status.snapshot().destinations), 120, "the queue")
        endpoint = agent.metrics
        assert endpoint is not None
        counts = agent.archive.counts() if agent.archive else None
        built = []
        for _ in range(args.scrapes):
            started = time.perf_counter()
            text = endpoint.metrics()
            built.append(time.perf_counter() - started)
        tracemalloc.start()
        endpoint.metrics()
        _now, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        over_http = http_times(f"http://127.0.0.1:{metrics_port}/metrics", args.scrapes)
    with Orthanc(root / "orthanc") as orthanc:
        storescu(orthanc.port, orthanc.ae_title, files)
        reference = http_times(f"http://127.0.0.1:{orthanc.http_port}/tools/metrics-prometheus",
                               args.scrapes)
    print(f"\n== one scrape: {counts.instances if counts else '?'} instances in the archive, "
          f"{args.queued} queued for a destination that is down")
    print(f"text: {len(text)} bytes, {len(text.splitlines())} lines")
    print(f"building the text, in the agent: {ms(built)}; peak allocated {peak / 1024:.0f} KiB")
    print(f"over HTTP, a new connection each: agent {ms(over_http)}")
    print(f"                                  Orthanc /tools/metrics-prometheus {ms(reference)}")
    print(f"ratio agent / Orthanc (medians): "
          f"{statistics.median(over_http) / statistics.median(reference):.2f}")
    return {"built": statistics.median(built), "http": statistics.median(over_http),
            "orthanc": statistics.median(reference), "peak": float(peak)}


def scraper(url: str, every: float, stop: threading.Event) -> threading.Thread:
    """A thread that GETs ``url`` every ``every`` seconds until ``stop``, as Prometheus."""
    def run() -> None:
        while not stop.wait(every):
            with urllib.request.urlopen(url, timeout=30) as answer:
                answer.read()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def idle(args: argparse.Namespace, data: Path, runs: Path) -> dict[str, float]:
    """The loaded agent idle, scraped every --every s, beside one without the endpoint;
    printed, and each one's share of a core returned (%)."""
    root = runs / "idle"
    metrics_port = free_port()
    on = EdgeAgent(root / "on", f"[metrics]\nport = {metrics_port}\n")
    off = EdgeAgent(root / "off")
    for agent in (on, off):
        linked_copy(data, agent.workdir / "data")
    stop = threading.Event()
    with on, off, Orthanc(root / "orthanc") as orthanc:
        # start-up work done: the reindexed studies are "arriving" until the quiet rule
        # (60 s by default) completes them, a minute of work that is not idling
        time.sleep(args.warmup)
        servers = {"agent, endpoint on and scraped": on, "agent, endpoint off": off,
                   "Orthanc, its metrics scraped": orthanc}
        before = {name: cpu_seconds(server.pid) for name, server in servers.items()}
        threads = [scraper(f"http://127.0.0.1:{metrics_port}/metrics", args.every, stop),
                   scraper(f"http://127.0.0.1:{orthanc.http_port}/tools/metrics-prometheus",
                           args.every, stop)]
        time.sleep(args.idle_seconds)
        share = {name: 100 * (cpu_seconds(server.pid) - before[name]) / args.idle_seconds
                 for name, server in servers.items()}
        memory = {name: rss_mb(server.pid) for name, server in servers.items()}
        stop.set()
        for thread in threads:
            thread.join(30)
        per_scrape = cpu_per_scrape(on, f"http://127.0.0.1:{metrics_port}/metrics",
                                    share["agent, endpoint off"] / 100)
    resolution = 100 / TICKS / args.idle_seconds
    print(f"\n== idle CPU, % of a core over {args.idle_seconds:g} s (±{resolution:.3f}), "
          f"scraped every {args.every:g} s (target: at most 0.2 %)")
    for name, value in share.items():
        met = "" if "Orthanc" in name or "off" in name else (
            "  met" if value <= 0.2 else "  NOT met")
        print(f"{name:36s} {value:6.3f} %  RSS {memory[name]:.0f} MB{met}")
    print(f"the endpoint's own cost: {1000 * per_scrape:.2f} ms of CPU per scrape in the agent, "
          f"{100 * per_scrape / args.every:.4f} % of a core at one scrape every {args.every:g} s")
    share["per scrape"] = per_scrape
    return share


def cpu_per_scrape(agent: EdgeAgent, url: str, idle_share: float, count: int = 300) -> float:
    """CPU seconds the agent spends per scrape: ``count`` scrapes back to back, less what
    it spends idle over that time (the two idle figures differ by more than one scrape's
    cost from one run to the next, so the cost is also measured on its own)."""
    before, started = cpu_seconds(agent.pid), time.monotonic()
    http_times(url, count)
    spent = cpu_seconds(agent.pid) - before - idle_share * (time.monotonic() - started)
    return max(0.0, spent) / count


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    """Both measures (bench_all.py's metrics path): scrape cost, then idle CPU."""
    data = loaded_archive(workdir, args.studies, args.per_study)
    runs = Path(tempfile.mkdtemp(prefix="runs-", dir=workdir))
    try:
        cost = scrape_cost(args, data, runs)
        share = idle(args, data, runs)
    finally:
        shutil.rmtree(runs, ignore_errors=True)
    return {**cost, "idle_on": share["agent, endpoint on and scraped"],
            "idle_off": share["agent, endpoint off"],
            "idle_orthanc": share["Orthanc, its metrics scraped"],
            "per_scrape": share["per scrape"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=1000)
    parser.add_argument("--per-study", type=int, default=100)
    parser.add_argument("--queued", type=int, default=1000)
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--idle-seconds", type=float, default=180.0)
    parser.add_argument("--every", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=75.0,
                        help="seconds after start before the idle window opens")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the loaded archive here between runs")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-metrics-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        measure(args, workdir)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
