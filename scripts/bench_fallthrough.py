#!/usr/bin/env python3
"""What fall-through Query/Retrieve costs and gives: the time to the first C-FIND answer
(and to the last local one) from an agent answering from its archive alone, one falling
through to a healthy Orthanc, and one falling through to a PACS that is down; and a
C-MOVE of a --move-count study held only at Orthanc, through the agent to a storescp,
against Orthanc sending it to that storescp itself.

    python scripts/bench_fallthrough.py [--local-studies 20] [--queries 100]
        [--move-count 300] [--repeat 3] [--workdir DIR]

    dev run:  python scripts/bench_fallthrough.py --local-studies 5 --queries 20 \\
                  --move-count 30 --repeat 1

C-FIND: pynetdicom in this process, one association per agent, study-level queries for
the patient (who has --local-studies studies in each agent and as many again only at
Orthanc), the three agents interleaved query by query; medians. C-MOVE: DCMTK movescu
into a fresh storescp, the two routes alternating, a study of its own for each round
(the agent must not hold it yet); medians of --repeat rounds.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import dicomgen
from bench.clients import dcmtk_env, measured, retrieve_times, storescu
from bench.peers import EdgeAgent, Orthanc, free_port
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, build_context

STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
PATIENT = "BENCHFT"
PENDING = (0xFF00, 0xFF01)


def make_studies(root: Path, count: int, per_study: int, size: int) -> list[list[Path]]:
    """``count`` studies of the patient, as files."""
    return [dicomgen.write_series(root / f"{i:04d}", per_study, size=size,
                                  study=dicomgen.Study(patient_id=PATIENT,
                                                       patient_name="BENCH^FT"))
            for i in range(count)]


def agent_tables(orthanc: Orthanc, pacs_port: int | None, bench_port: int) -> str:
    """[peers] (and [qr] when it falls through to ``pacs_port``) for one agent."""
    text = (f'\n[peers.BENCH]\nae_title = "BENCH"\nhost = "127.0.0.1"\nport = {bench_port}\n'
            'allow = ["echo", "store", "find", "move", "get"]\n'
            f'\n[peers.PACS]\nae_title = "{orthanc.ae_title}"\nhost = "127.0.0.1"\n'
            f'port = {pacs_port or orthanc.port}\nallow = ["echo", "store"]\n')
    if pacs_port is not None:
        text += '\n[qr]\nfall_through = ["PACS"]\nfall_through_timeout = 5\n'
    return text


def first_answers(port: int, queries: int) -> Iterator[tuple[float, float]]:
    """Per query: seconds to the first answer and to the last local one (ONLINE)."""
    ae = AE(ae_title="BENCH")
    ae.requested_contexts = [build_context(STUDY_FIND)]
    assoc = ae.associate("127.0.0.1", port, ae_title="EDGE")
    if not assoc.is_established:
        raise RuntimeError(f"cannot associate with the agent on {port}")
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientID = PATIENT
    query.StudyInstanceUID = ""
    query.InstanceAvailability = ""
    try:
        for _ in range(queries):
            started = time.perf_counter()
            first = last_local = 0.0
            for status, answer in assoc.send_c_find(query, STUDY_FIND):
                if not status or status.Status not in PENDING:
                    break
                now = time.perf_counter() - started
                first = first or now
                if answer.get("InstanceAvailability", "ONLINE") == "ONLINE":
                    last_local = now
            yield first, last_local
    finally:
        assoc.release()


def find_times(agents: dict[str, EdgeAgent], queries: int) -> dict[str, tuple[float, float]]:
    """Medians per agent, the agents asked in turn, one query each, ``queries`` rounds."""
    streams = {name: first_answers(agent.port, queries) for name, agent in agents.items()}
    seen: dict[str, list[tuple[float, float]]] = {name: [] for name in agents}
    for _ in range(queries):
        for name, stream in streams.items():
            seen[name].append(next(stream))
    for stream in streams.values():
        stream.close()
    return {name: (statistics.median(t[0] for t in times),
                   statistics.median(t[1] for t in times)) for name, times in seen.items()}


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    """Both measures; printed, and returned for bench_all.py."""
    made = workdir / "made"
    local = make_studies(made / "local", args.local_studies, 5, 64)
    remote = make_studies(made / "remote", args.local_studies, 5, 64)
    moved = make_studies(made / "moved", args.repeat, args.move_count, args.size)
    bench_port = free_port()
    agents = {name: EdgeAgent(workdir / name) for name in ("off", "on", "dead")}
    with ExitStack() as stack:
        orthanc = stack.enter_context(Orthanc(workdir / "orthanc", modalities={
            "EDGE": ["EDGE", "127.0.0.1", agents["on"].port],
            "BENCH": ["BENCH", "127.0.0.1", bench_port]}))
        for path in [p for study in remote + moved for p in study]:
            orthanc.rest("/instances", data=path.read_bytes())
        pacs = {"off": None, "on": orthanc.port, "dead": free_port()}
        for name, agent in agents.items():
            agent.peers = agent_tables(orthanc, pacs[name], bench_port)
            stack.enter_context(agent)
            for study in local:
                measured(storescu("EDGE", agent.port, study[0].parent), dcmtk_env())
        finds = find_times(agents, args.queries)
        moves: dict[str, list[tuple[float, float]]] = {"through the agent": [],
                                                        "Orthanc directly": []}
        for study in moved:
            uid = str(dcmread(study[0], stop_before_pixels=True).StudyInstanceUID)
            routes = {"Orthanc directly": orthanc, "through the agent": agents["on"]}
            for name, server in routes.items():
                moves[name].append(retrieve_times("C-MOVE", server, uid, bench_port,
                                                  workdir / "moves", args.move_count))
    medians = {name: (statistics.median(t[0] for t in times),
                      statistics.median(t[1] for t in times)) for name, times in moves.items()}
    return report(args, finds, medians)


def report(args: argparse.Namespace, finds: dict[str, tuple[float, float]],
           moves: dict[str, tuple[float, float]]) -> dict[str, float]:
    off_first, off_last = finds["off"]
    print(f"\n== C-FIND for a patient with {args.local_studies} studies here and as many only "
          f"at Orthanc, {args.queries} queries, medians (ms)")
    print(f"{'agent':34s} {'first answer':>13s} {'last local':>11s} {'ratio':>6s}")
    names = {"off": "archive only", "on": "falling through to Orthanc",
             "dead": "falling through to a PACS that is down"}
    for key, (first, last) in finds.items():
        ratio = last / off_last if off_last else float("nan")
        verdict = "" if key == "off" else ("  met" if ratio <= 1.1 else "  NOT met")
        print(f"{names[key]:34s} {1000 * first:13.2f} {1000 * last:11.2f} {ratio:6.2f}{verdict}")
    (through, through_first), (direct, direct_first) = (moves["through the agent"],
                                                        moves["Orthanc directly"])
    print(f"\n== C-MOVE of a {args.move_count}-instance study held only at Orthanc, to a "
          f"storescp, medians of {args.repeat} (the whole study; its first instance there)")
    print(f"through the agent (it pulls and streams)  {through:7.2f} s, "
          f"first {through_first:.2f} s")
    print(f"Orthanc directly                          {direct:7.2f} s, "
          f"first {direct_first:.2f} s")
    verdict = "met" if through <= 1.3 * direct else "NOT met"
    print(f"ratio {through / direct:.2f} (target at most 1.3: {verdict})")
    return {"find_off": off_last, "find_on": finds["on"][1], "find_dead": finds["dead"][1],
            "first_off": off_first, "first_on": finds["on"][0], "first_dead": finds["dead"][0],
            "move_through": through, "move_direct": direct,
            "first_through": through_first, "first_direct": direct_first}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--local-studies", type=int, default=20)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--move-count", type=int, default=300)
    parser.add_argument("--size", type=int, default=256, help="pixels per side")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-fallthrough-"))
    try:
        measure(args, workdir)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
