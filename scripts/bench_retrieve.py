#!/usr/bin/env python3
"""Pulling a prior study from the PACS: `edge-agent retrieve` against DCMTK's getscu and
movescu, side by side in one run, all pulling the same study from the same Orthanc.

    python scripts/bench_retrieve.py [--instances 200] [--size 512] [--rounds 3]

Each round pulls into an empty directory (DCMTK) or an empty archive (the agent, which
also fsyncs and indexes every instance). The agent's --move runs with no agent serving,
so it starts its temporary receiver: the worst case. Medians are printed, with ratios.
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
from bench.peers import DCMTK, REPO, Orthanc, free_port
from pydicom import dcmread


def dcmtk_env() -> dict[str, str]:
    """DCMTK with Nagle off, as the agent and Orthanc run."""
    return {**os.environ, "TCP_NODELAY": "1"}


def agent_config(path: Path, port: int, orthanc: Orthanc) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f'[agent]\nae_title = "EDGE"\nport = {port}\nbind = "127.0.0.1"\n'
        f'data_dir = "{path.parent / "data"}"\nmin_free_mb = 0\n\n'
        f'[peers.PACS]\nae_title = "ORTHANC"\nhost = "127.0.0.1"\nport = {orthanc.port}\n'
        'allow = ["echo", "store"]\n'
    )
    return path


def timed(command: list[str], expect: str | None = None) -> float:
    """Seconds a command takes; it must succeed (and print ``expect``, if given)."""
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=dcmtk_env(), timeout=600)
    elapsed = time.perf_counter() - started
    if done.returncode != 0 or (expect and expect not in done.stdout):
        raise SystemExit(f"{command[0]} failed:\n{done.stdout}\n{done.stderr}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--size", type=int, default=512, help="rows and columns per image")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    agent_port, movescu_port = free_port(), free_port()
    edge = [sys.executable, "-m", "agent"]
    os.environ["PYTHONPATH"] = str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")
    with tempfile.TemporaryDirectory(prefix="bench-retrieve-") as tmp:
        root = Path(tmp)
        files = dicomgen.write_series(root / "study", args.instances, size=args.size)
        study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        modalities = {"EDGE": ["EDGE", "127.0.0.1", agent_port],
                      "MOVESCU": ["MOVESCU", "127.0.0.1", movescu_port]}
        with Orthanc(root / "orthanc", modalities) as orthanc:
            for path in files:
                orthanc.rest("/instances", path.read_bytes())
            config = agent_config(root / "agent" / "agent.toml", agent_port, orthanc)
            key = ["-k", f"StudyInstanceUID={study_uid}"]
            out = root / "out"
            runs: dict[str, list[str]] = {
                "getscu (DCMTK)": [str(DCMTK / "getscu"), "-S", "-aec", "ORTHANC",
                                   "-od", str(out), "-k", "QueryRetrieveLevel=STUDY", *key,
                                   "127.0.0.1", str(orthanc.port)],
                "edge-agent retrieve --get": [*edge, "retrieve", "PACS", *key, "--get",
                                              "--config", str(config)],
                "movescu (DCMTK)": [str(DCMTK / "movescu"), "-S", "-aet", "MOVESCU",
                                    "-aem", "MOVESCU", "-aec", "ORTHANC", "+P",
                                    str(movescu_port), "-od", str(out),
                                    "-k", "QueryRetrieveLevel=STUDY", *key,
                                    "127.0.0.1", str(orthanc.port)],
                "edge-agent retrieve --move": [*edge, "retrieve", "PACS", *key, "--move",
                                               "--config", str(config)],
            }
            seconds: dict[str, list[float]] = {name: [] for name in runs}
            for _ in range(args.rounds):
                for name, command in runs.items():
                    shutil.rmtree(out, ignore_errors=True)
                    out.mkdir()
                    shutil.rmtree(config.parent / "data", ignore_errors=True)
                    expect = f"{args.instances} instances retrieved" if "edge" in name else None
                    seconds[name].append(timed(command, expect))
                    if "DCMTK" in name and len(list(out.iterdir())) != args.instances:
                        raise SystemExit(f"{name} received {len(list(out.iterdir()))} files")
    median = {name: statistics.median(values) for name, values in seconds.items()}
    print(f"{args.instances} instances of {args.size}x{args.size} from Orthanc, "
          f"median of {args.rounds} rounds")
    print(f"{'command':<28} {'seconds':>8} {'vs DCMTK':>9}")
    for name, value in median.items():
        reference = median["getscu (DCMTK)" if "get" in name else "movescu (DCMTK)"]
        print(f"{name:<28} {value:8.2f} {value / reference:8.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
