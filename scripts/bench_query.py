#!/usr/bin/env python3
"""Query/retrieve benchmark: the agent and Orthanc loaded with the same archive, side by
side in one run.

    python scripts/bench_query.py [--studies 10000] [--per-study 10] [--queries 50]

Figures: median and 95th-percentile latency of a study-level C-FIND on a Person Name
prefix wildcard and on a date range (one association, pynetdicom SCU), and the time to
C-MOVE and C-GET a 500-instance 512x512 CT series to DCMTK's storescp (movescu, getscu).
Target (issue 3): every figure at or better than Orthanc's.

The agent's archive is filled by writing the files where the agent keeps them and
running its own `reindex`; Orthanc's through its REST API. Load times are printed.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dicomgen
from bench.peers import DCMTK, REPO, EdgeAgent, Orthanc, Receiver, free_port, wait_for
from pydicom.dataset import Dataset
from pynetdicom import AE, build_context, evt

from agent.net.engine.transport import on_connection_open

STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
SURNAMES = ["SMITH", "JONES", "MILLER", "DAVIS", "GARCIA", "RODRIGUEZ", "WILSON", "MARTINEZ",
            "ANDERSON", "TAYLOR", "THOMAS", "HERNANDEZ", "MOORE", "MARTIN", "JACKSON",
            "THOMPSON", "WHITE", "LOPEZ", "LEE", "GONZALEZ", "HARRIS", "CLARK", "LEWIS",
            "ROBINSON", "WALKER", "PEREZ", "HALL", "YOUNG", "ALLEN", "SANCHEZ", "WRIGHT",
            "KING", "SCOTT", "GREEN", "BAKER", "ADAMS", "NELSON", "HILL", "RAMIREZ", "CAMPBELL",
            "MITCHELL", "ROBERTS", "CARTER", "PHILLIPS", "EVANS", "TURNER", "TORRES", "PARKER",
            "COLLINS", "EDWARDS"]
GIVEN = ["ANNA", "BEN", "CARL", "DORA", "EMIL", "FAYE", "GUS", "HANNA", "IVAN", "JUNE"]


def archive_files(root: Path, studies: int, per_study: int) -> tuple[list[Path], dict[str, str]]:
    """Generate the small-instance archive and a 500-instance study of one series;
    return every file and the big study's key."""
    files: list[Path] = []
    for number in range(studies):
        name = f"{SURNAMES[number % len(SURNAMES)]}^{GIVEN[number // len(SURNAMES) % 10]}"
        day = time.gmtime(1672531200 + (number * 86400 * 3 * 365 // studies))
        study = dicomgen.Study(patient_name=name, patient_id=f"ID{number:06d}",
                               study_date=time.strftime("%Y%m%d", day), accession=f"A{number}")
        files += _write(root, dicomgen.series(per_study, size=8, study=study))
    big = dicomgen.Study(patient_name="BIG^SERIES", patient_id="BIG1")
    big_files = _write(root, dicomgen.series(500, size=512, study=big))
    return files + big_files, {"StudyInstanceUID": big.study_uid}


def _write(root: Path, datasets: object) -> list[Path]:
    paths = []
    for ds in datasets:  # type: ignore[attr-defined]
        path = root / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def load_agent(agent_dir: Path, source: Path) -> float:
    """Place the files in the agent's archive and run `edge-agent reindex`; seconds."""
    started = time.perf_counter()
    shutil.copytree(source, agent_dir / "data" / "archive")
    config = agent_dir / "reindex.toml"
    config.write_text(f'[agent]\ndata_dir = "{agent_dir / "data"}"\nmin_free_mb = 0\n')
    env = dict(os.environ, PYTHONPATH=str(REPO))
    subprocess.run([sys.executable, "-m", "agent", "reindex", "--config", str(config)],
                   check=True, env=env, capture_output=True, timeout=7200)
    return time.perf_counter() - started


def load_orthanc(orthanc: Orthanc, files: list[Path]) -> float:
    """POST every file to Orthanc's REST API with a few threads; seconds."""
    started = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda p: orthanc.rest("/instances", p.read_bytes()), files))
    return time.perf_counter() - started


def find_latencies(port: int, called: str, queries: list[Dataset]) -> tuple[list[float], int]:
    """Seconds per C-FIND over one association, and the answers to the first query."""
    ae = AE(ae_title="BENCH")
    ae.requested_contexts = [build_context(STUDY_FIND)]
    # Nagle off on our side, so that each server's own latency is what is measured
    assoc = ae.associate("127.0.0.1", port, ae_title=called,
                         evt_handlers=[(evt.EVT_CONN_OPEN, on_connection_open)])
    if not assoc.is_established:
        raise RuntimeError(f"cannot associate with {called}")
    latencies, first_count = [], -1
    try:
        for query in queries:
            started = time.perf_counter()
            count = sum(1 for s, _ in assoc.send_c_find(query, STUDY_FIND)
                        if s and s.Status in (0xFF00, 0xFF01))
            latencies.append(time.perf_counter() - started)
            first_count = count if first_count < 0 else first_count
    finally:
        assoc.release()
    return latencies, first_count


def study_query(**keys: str) -> Dataset:
    """A study-level Study Root query returning the usual keys."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for keyword in ("StudyInstanceUID", "StudyDate", "PatientID", "PatientName",
                    "AccessionNumber", "ModalitiesInStudy"):
        setattr(ds, keyword, keys.get(keyword, ""))
    return ds


def query_sets(repeat: int) -> dict[str, list[Dataset]]:
    """The two kinds of query, varied over the repetitions."""
    months = [f"2024{m:02d}01-2024{m:02d}28" for m in range(1, 13)]
    return {
        "C-FIND PN prefix": [study_query(PatientName=f"{SURNAMES[i % 50][:3]}*")
                             for i in range(repeat)],
        "C-FIND date range": [study_query(StudyDate=months[i % 12]) for i in range(repeat)],
    }


def retrieve_seconds(kind: str, server: Receiver, keys: dict[str, str], destination: int,
                     workdir: Path) -> float:
    """Time one movescu/getscu of the big study; checks that 500 files arrived."""
    out = workdir / f"{kind}-{server.name}-{time.monotonic_ns()}"
    out.mkdir(parents=True)
    args = ["-aet", "BENCH", "-aec", server.ae_title, "-S", "-k", "QueryRetrieveLevel=STUDY",
            "-k", f"StudyInstanceUID={keys['StudyInstanceUID']}"]
    env = dict(os.environ, TCP_NODELAY="1")
    receiver = None
    if kind == "C-MOVE":
        receiver = subprocess.Popen([str(DCMTK / "storescp"), "-aet", "BENCH", "-od", str(out),
                                     str(destination)], env=env)
        wait_for(lambda: subprocess.run([str(DCMTK / "echoscu"), "127.0.0.1", str(destination)],
                                        capture_output=True).returncode == 0, 30, "storescp")
        command = [str(DCMTK / "movescu"), *args, "-aem", "BENCH"]
    else:
        command = [str(DCMTK / "getscu"), *args, "-od", str(out)]
    try:
        started = time.perf_counter()
        subprocess.run([*command, "127.0.0.1", str(server.port)], env=env, check=True,
                       capture_output=True, timeout=1800)
        seconds = time.perf_counter() - started
    finally:
        if receiver:
            receiver.terminate()
            receiver.wait(20)
    arrived = sum(1 for _ in out.iterdir())
    shutil.rmtree(out)
    if arrived != 500:
        raise RuntimeError(f"{kind} from {server.name}: {arrived} of 500 arrived")
    return seconds


def p95(values: list[float]) -> float:
    """95th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[max(0, round(0.95 * len(ordered)) - 1)]


def main() -> None:
    """Generate, load both servers, measure, report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=10000)
    parser.add_argument("--per-study", type=int, default=10)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-query-"))
    destination = free_port()
    try:
        started = time.perf_counter()
        files, keys = archive_files(workdir / "source", args.studies, args.per_study)
        print(f"generated {len(files)} instances ({args.studies} studies + a 500-instance"
              f" series) in {time.perf_counter() - started:.0f} s", flush=True)
        peers = (f'\n[peers.BENCH]\nae_title = "BENCH"\nhost = "127.0.0.1"\nport = {destination}'
                 '\nallow = ["echo", "find", "move", "get"]\n')
        agent_seconds = load_agent(workdir / "agent", workdir / "source")
        orthanc = Orthanc(workdir / "orthanc", {"BENCH": ["BENCH", "127.0.0.1", destination]})
        with EdgeAgent(workdir / "agent", peers) as agent, orthanc:
            orthanc_seconds = load_orthanc(orthanc, files)
            print(f"loaded: agent {agent_seconds:.0f} s (copy + reindex),"
                  f" Orthanc {orthanc_seconds:.0f} s (REST)", flush=True)
            report(measure(agent, orthanc, keys, destination, workdir, args))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def measure(agent: EdgeAgent, orthanc: Orthanc, keys: dict[str, str], destination: int,
            workdir: Path, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Every figure for both servers: {figure: {server: seconds}}."""
    figures: dict[str, dict[str, float]] = {}
    for label, queries in query_sets(args.queries).items():
        for server in (agent, orthanc):
            latencies, count = find_latencies(server.port, server.ae_title, queries)
            figures.setdefault(f"{label} median", {})[server.name] = statistics.median(latencies)
            figures.setdefault(f"{label} p95", {})[server.name] = p95(latencies)
            print(f"  {label:18} {server.name:10} first query: {count} answers", flush=True)
    for kind in ("C-MOVE", "C-GET"):
        for server in (agent, orthanc):
            runs = [retrieve_seconds(kind, server, keys, destination, workdir)
                    for _ in range(args.repeat)]
            figures.setdefault(f"{kind} 500 x 512x512", {})[server.name] = statistics.median(runs)
    return figures


def report(figures: dict[str, dict[str, float]]) -> None:
    """One line per figure: both times, the ratio, the verdict."""
    print(f"\n{'figure':30} {'edge-agent':>12} {'Orthanc':>12} {'ratio':>7}")
    for figure, times in figures.items():
        agent, orthanc = times["edge-agent"], times["Orthanc"]
        unit, scale = ("ms", 1000) if "FIND" in figure else ("s", 1)
        verdict = "target met" if agent <= orthanc else "NOT met"
        print(f"{figure:30} {agent * scale:9.1f} {unit:2} {orthanc * scale:9.1f} {unit:2}"
              f" {agent / orthanc:7.2f}  {verdict}")


if __name__ == "__main__":
    main()
