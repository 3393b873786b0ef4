#!/usr/bin/env python3
"""Storage commitment round trip toward a PACS: the agent beside Orthanc as SCU.

    python scripts/bench_commit.py [--count 200] [--workdir DIR]

N instances go by storescu into the agent, which forwards them to Orthanc ("PACS") and
asks it for commitment (commit = true, commit_after_seconds = 0.2). Printed: the agent's
request-to-report time (N-ACTION sent to report settled, from its table), and the time
from the last delivery to every instance committed. Beside it, a second Orthanc holding
the same instances asks the PACS for commitment of all N through its REST API
(POST /modalities/PACS/storage-commitment, polled every 10 ms until Success).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import dicomgen
from bench.clients import dcmtk_env, measured, storescu
from bench.peers import Orthanc, free_port, wait_for

from agent import config as config_module
from agent.app import Agent
from agent.archive.index import connect


def agent_config(root: Path, port: int, pacs_port: int) -> Path:
    """The agent forwarding to PACS with commit = true."""
    path = root / "agent.toml"
    path.write_text(f"""[agent]
ae_title = "EDGE"
port = {port}
bind = "127.0.0.1"
data_dir = "{root / 'data'}"
min_free_mb = 0
log_level = "warning"

[peers.CT]
ae_title = "BENCH"
host = "127.0.0.1"
port = 104
allow = ["store"]

[peers.PACS]
ae_title = "ORTHANC"
host = "127.0.0.1"
port = {pacs_port}
allow = ["echo"]
commit = true
commit_after_seconds = 0.2

[forward]
to = ["PACS"]
""")
    return path


def round_trips(root: Path, count: int) -> tuple[float, float, int, float]:
    """(request to report, last delivery to all committed, transactions) for the agent,
    and Orthanc-as-SCU's request to report, against one PACS."""
    port = free_port()
    pacs = Orthanc(root / "pacs")
    oscu = Orthanc(root / "oscu", modalities={"PACS": ["ORTHANC", "127.0.0.1", pacs.port]})
    oscu.ae_title = "OSCU"
    pacs.modalities = {"EDGE": ["EDGE", "127.0.0.1", port],
                       "OSCU": ["OSCU", "127.0.0.1", oscu.port]}
    with pacs:
        config = config_module.load_file(agent_config(root, port, pacs.port))
        with Agent(config):
            measured(storescu("EDGE", port, root / "study"), env=dcmtk_env())
            wait_for(lambda: committed(root / "data") == count, 120, "every commitment")
        request_to_report, after_delivery, transactions = timings(root / "data")
        with oscu:
            orthanc_seconds = orthanc_round_trip(root, oscu, count)
    return request_to_report, after_delivery, transactions, orthanc_seconds


def committed(data_dir: Path) -> int:
    conn = connect(data_dir / "index.sqlite", readonly=True)
    try:
        return int(conn.execute(
            "SELECT count(*) FROM pacs_commits WHERE state = 'committed'").fetchone()[0])
    finally:
        conn.close()


def timings(data_dir: Path) -> tuple[float, float, int]:
    conn = connect(data_dir / "index.sqlite", readonly=True)
    try:
        rows = conn.execute(
            "SELECT transaction_uid, min(requested_at), max(settled_at), max(delivered_at)"
            " FROM pacs_commits GROUP BY transaction_uid").fetchall()
    finally:
        conn.close()
    request_to_report = max(settled - requested for _, requested, settled, _ in rows)
    after_delivery = max(r[2] for r in rows) - max(r[3] for r in rows)
    return request_to_report, after_delivery, len(rows)


def orthanc_round_trip(root: Path, scu: Orthanc, count: int) -> float:
    """Orthanc as SCU asking the same PACS about the same instances (REST, polled)."""
    refs = []
    for path in sorted((root / "study").glob("*.dcm")):
        answer = scu.rest("/instances", path.read_bytes())
        tags = scu.rest(f"/instances/{answer['ID']}/simplified-tags")
        refs.append({"SOPClassUID": tags["SOPClassUID"],
                     "SOPInstanceUID": tags["SOPInstanceUID"]})
    assert len(refs) == count
    started = time.monotonic()
    job = scu.rest("/modalities/PACS/storage-commitment",
                   json.dumps({"DicomInstances": refs}).encode())
    wait_for(lambda: scu.rest(job["Path"])["Status"] == "Success", 120,
             "Orthanc's commitment", interval=0.01)
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = args.workdir or Path(scratch)
        dicomgen.write_series(root / "study", args.count, size=64)
        request_to_report, after_delivery, transactions, orthanc = round_trips(
            root, args.count)
    print(f"storage commitment of {args.count} instances by Orthanc 1.10.1 (report on a new"
          " association)")
    print(f"{'':34} {'edge-agent':>12} {'Orthanc SCU':>12}")
    print(f"{'request -> report settled (s)':34} {request_to_report:12.3f} {orthanc:12.3f}")
    print(f"{'last delivery -> all committed (s)':34} {after_delivery:12.3f} {'-':>12}")
    print(f"{'transactions':34} {transactions:12d} {1:12d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
