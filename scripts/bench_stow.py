#!/usr/bin/env python3
"""Forwarding by STOW-RS against C-STORE, to the same Orthanc 1.10 (its DICOMweb plugin
for one, its DICOM port for the other): the seconds from the first instance stored into
the agent to the last one held by Orthanc, and the forwarding process's peak memory; then
one large instance by STOW-RS, to show the request body is streamed from the file.

    python scripts/bench_stow.py [--count 500] [--size 512] [--large-mb 400] [--workdir DIR]

    dev run:  python scripts/bench_stow.py --count 50 --size 128 --large-mb 50

The study is stored into the agent by DCMTK's storescu over one association; each route
gets a fresh agent and a fresh Orthanc. Peak memory is the forwarding process's VmHWM.
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
from bench.peers import EdgeAgent, Orthanc, peak_rss_mb, published_serving, wait_for

DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


class WebOrthanc(Orthanc):
    """Orthanc with its DICOMweb plugin, no authentication."""

    def command(self) -> list[str]:
        import json

        command = super().command()
        path = Path(command[-1])
        config = json.loads(path.read_text())
        config.update({"Plugins": [DICOMWEB_PLUGIN],
                       "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}})
        path.write_text(json.dumps(config))
        return command


def destination(route: str, orthanc: Orthanc) -> str:
    """The agent's peer table for ``route`` and its [forward] table."""
    if route == "stow":
        peer = (f'[peers.DEST]\nkind = "dicomweb"\n'
                f'url = "http://127.0.0.1:{orthanc.http_port}/dicom-web"\n')
    else:
        peer = f'[peers.DEST]\nae_title = "ORTHANC"\nhost = "127.0.0.1"\nport = {orthanc.port}\n'
    return "\n" + peer + '\n[forward]\nto = ["DEST"]\n'


def forwarder_pid(agent: EdgeAgent) -> int:
    status = published_serving(agent.workdir / "data", agent.pid) or {}
    return int(status.get("forwarder_pid") or 0)


def run(route: str, source: Path, count: int, workdir: Path) -> tuple[float, float]:
    """Seconds from the first store to Orthanc holding ``count``; the forwarder's peak MB."""
    with WebOrthanc(workdir / f"orthanc-{route}") as orthanc, \
            EdgeAgent(workdir / f"agent-{route}", destination(route, orthanc)) as agent:
        pid = forwarder_pid(agent)
        started = time.perf_counter()
        measured(storescu(agent.ae_title, agent.port, source), dcmtk_env())
        wait_for(lambda: orthanc.count() >= count, 1800, f"{count} instances at Orthanc",
                 interval=0.1)
        return time.perf_counter() - started, peak_rss_mb(pid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--size", type=int, default=512, help="rows = columns")
    parser.add_argument("--large-mb", type=int, default=400)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-stow-"))
    try:
        study = workdir / "study"
        dicomgen.write_series(study, args.count, size=args.size)
        megabytes = sum(p.stat().st_size for p in study.iterdir()) / 1e6
        print(f"{args.count} instances of {args.size}x{args.size}, {megabytes:.0f} MB")
        for route in ("c-store", "stow"):
            seconds, peak = run(route, study, args.count, workdir)
            print(f"  {route:8} {seconds:6.1f} s  {megabytes / seconds:6.1f} MB/s"
                  f"  forwarding process peak {peak:.0f} MB")
        large = workdir / "large"
        large.mkdir()
        dicomgen.large_instance(large / "large.dcm", args.large_mb * 1024 * 1024)
        seconds, peak = run("stow", large, 1, workdir / "large-run")
        print(f"one instance of {args.large_mb} MB by STOW-RS: {seconds:.1f} s,"
              f" forwarding process peak {peak:.0f} MB")
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
