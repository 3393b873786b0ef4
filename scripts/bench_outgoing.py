#!/usr/bin/env python3
"""What changing the copy that goes out costs (issue 25): coercion and de-identification
of a real CT header (pydicom's CT_small, GE, with its private groups), per instance and as
a forwarding rate against forwarding the files as stored; then one large multi-frame
instance forwarded with a coercion rule, and the forwarding process's peak memory.

    python scripts/bench_outgoing.py [--count 500] [--large-mb 1024] [--workdir DIR]

    dev run:  python scripts/bench_outgoing.py --count 100 --large-mb 100

Per instance: ``agent.outgoing.writer.prepare`` in this process, the mean of ``--count``
calls (header read, changed, written, pixel bytes copied; the file is in the page cache).
Forwarding: a fresh agent and a fresh DCMTK storescp per route; the seconds from the first
instance stored into the agent (storescu, one association) to the last one written by
storescp (storing into the agent runs meanwhile and weighs on it: on a shared machine the
forwarding process's CPU per instance is the steadier figure). Peak memory is the
forwarding process's VmHWM (target: < 150 MB for 1 GB).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import dicomgen
from bench.clients import dcmtk_env, measured, storescu
from bench.peers import (
    EdgeAgent,
    StoreSCP,
    cpu_seconds,
    peak_rss_mb,
    published_serving,
    wait_for,
)
from pydicom import dcmread
from pydicom.data import get_testdata_file

from agent import config as config_module
from agent.outgoing.writer import prepare

ROUTES = {
    "as stored": "",
    "coercion": ('\n[peers.DEST.coerce]\nset = { InstitutionName = "Radiology Room 2",'
                 ' StationName = "CT1" }\nremove = ["OperatorsName", "(0009,xxxx)"]\n'),
    "de-identified": ('deidentify = "basic"\ndeidentify_options ='
                      ' ["retain-longitudinal-modified-dates", "retain-device-identity"]\n'),
}


def ct_study(directory: Path, count: int) -> Path:
    """``count`` copies of CT_small, one series, each with its own SOP Instance UID."""
    directory.mkdir(parents=True)
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    base = ds.SOPInstanceUID
    for i in range(count):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{base}.{i}"
        ds.InstanceNumber = i + 1
        ds.save_as(directory / f"{i:05}.dcm", enforce_file_format=True)
    return directory


def destination(route: str, storescp: StoreSCP) -> str:
    """The DEST peer (with the route's keys) and a [forward] table."""
    keys = ROUTES[route]
    table = (f'[peers.DEST]\nae_title = "{storescp.ae_title}"\nhost = "127.0.0.1"\n'
             f"port = {storescp.port}\n")
    table += keys
    return "\n" + table + '\n[forward]\nto = ["DEST"]\n'


def per_instance(study: Path, workdir: Path) -> dict[str, float]:
    """Milliseconds per instance to prepare each route's copy."""
    out: dict[str, float] = {}
    (workdir / "data").mkdir(parents=True)
    for route, keys in ROUTES.items():
        text = "[peers.DEST]\nae_title = \"D\"\nhost = \"127.0.0.1\"\nport = 104\n" + keys
        toml = workdir / f"{route}.toml"
        toml.write_text(f'[agent]\ndata_dir = "{workdir / "data"}"\n' + text)
        outgoing = config_module.load_file(toml).peers["DEST"].outgoing
        files = sorted(study.iterdir())
        prepare(outgoing, files[0], workdir / "data", "bench")  # warm: imports, secret
        started = time.perf_counter()
        for path in files:
            prepare(outgoing, path, workdir / "data", "bench")
        out[route] = (time.perf_counter() - started) / len(files) * 1000
    return out


def forward(route: str, source: Path, count: int, workdir: Path) -> tuple[float, float, float]:
    """Seconds from the first store to storescp holding ``count``; the forwarding
    process's CPU seconds for them and its peak MB."""
    name = route.replace(" ", "-")
    with StoreSCP(workdir / f"storescp-{name}") as scp, \
            EdgeAgent(workdir / f"agent-{name}", destination(route, scp)) as agent:
        status = published_serving(agent.workdir / "data", agent.pid) or {}
        pid = int(status.get("forwarder_pid") or 0)
        cpu = cpu_seconds(pid, children=False)
        started = time.perf_counter()
        measured(storescu(agent.ae_title, agent.port, source), dcmtk_env())
        wait_for(lambda: scp.count() >= count, 3600, f"{count} instances at storescp",
                 interval=0.05)
        seconds = time.perf_counter() - started
        return seconds, cpu_seconds(pid, children=False) - cpu, peak_rss_mb(pid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--large-mb", type=int, default=1024)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-outgoing-"))
    try:
        study = ct_study(workdir / "study", args.count)
        megabytes = sum(p.stat().st_size for p in study.iterdir()) / 1e6
        print(f"{args.count} CT instances (CT_small, 128x128), {megabytes:.1f} MB")
        for route, ms in per_instance(study, workdir / "prepare").items():
            print(f"  prepare {route:14} {ms:7.2f} ms per instance")
        for route in ROUTES:
            seconds, cpu, peak = forward(route, study, args.count, workdir)
            print(f"  forward {route:14} {seconds:6.1f} s  {args.count / seconds:6.1f}"
                  f" instances/s  forwarding process CPU {cpu / args.count * 1000:5.2f} ms"
                  f" per instance, peak {peak:.0f} MB")
        large = workdir / "large"
        large.mkdir()
        dicomgen.large_instance(large / "large.dcm", args.large_mb * 1024 * 1024)
        seconds, _cpu, peak = forward("coercion", large, 1, workdir / "large-run")
        print(f"one multi-frame instance of {args.large_mb} MB with a coercion rule:"
              f" {seconds:.1f} s, forwarding process peak {peak:.0f} MB")
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
