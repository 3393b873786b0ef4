#!/usr/bin/env python3
"""Every path in one run: the agent beside Orthanc and DCMTK on the same data, one table.

    python scripts/bench_all.py [--modes normal,small-box] [--paths all] [--repeat 3]
        [--count 500] [--studies 2000,10000] [--skip-big] [--workdir DIR]

    dev run:  python scripts/bench_all.py --modes normal --count 40 --studies 200 \\
                  --move-count 30 --retrieve-count 20 --idle-seconds 5 --skip-big

Paths (--paths, comma-separated): ingest (500 x 512x512 CT by storescu over one
association, sender Nagle on and off, into the agent, Orthanc, DCMTK storescp and a bare
pynetdicom receiver that fsyncs each file), senders (four storescu at once, 125 each),
move-get (C-MOVE to a storescp and C-GET by getscu of 300 instances from the agent,
Orthanc and dcmqrscp), find (study-level C-FIND medians and p95 on each --studies
archive), forward (500 instances through the agent to Orthanc vs straight into it),
retrieve (`edge-agent retrieve --get/--move` of 200 from Orthanc vs getscu/movescu),
idle (CPU over a window, all servers idle side by side), big (the agent's peak RSS
while it receives one 1 GB instance) and study (scripts/bench_study.py: last store to
"complete" under MPPS and under the quiet rule, quiet_seconds = 2; a --count study at
Orthanc with forward.when = "complete", MPPS completing it, against "instance") and
metrics (scripts/bench_metrics.py: one /metrics scrape of an agent holding
--metrics-instances with --metrics-queued waiting, against Orthanc's, and the idle CPU
of one scraped every 15 s over --idle-seconds, against the same agent without it) and
fall-through (scripts/bench_fallthrough.py: the time to the last local C-FIND answer with
fall-through off, on and to a PACS that is down; a C-MOVE of a --move-count study held
only at Orthanc, through the agent to a storescp, against Orthanc sending it itself) and
bandwidth (scripts/bench_bandwidth.py: the rate at a storescp over 20 s, forwarding with
max_bytes_per_second at 1, 4 and 10 MB/s, as a fraction of the cap; the issue: within 10 %).

Each line gives the agent's figure, a reference's, the ratio and, where the issue sets
one, the target and whether it is met; the agent's CPU seconds (utime+stime from
/proc/PID/stat over the measured work, its forwarding process included; for the retrieve
CLI, its rusage) and peak RSS (VmHWM, summed over the agent's processes; for the CLI, polled
while it runs). Times are medians of
--repeat rounds, the receivers interleaved within each round, each on a fresh receiver.

--modes small-box pins every server and client (DCMTK tools, Orthanc, the agent and its
CLI, the in-process C-FIND SCU) to core 0 with taskset: one core standing in for a Pi's.
With both modes, the small-box table says whether each ratio is within 1.5x of its
normal-mode value. Generated data and loaded archives are shared by the two modes.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

# this tree's agent (not whichever one the interpreter has installed), then scripts/
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_bandwidth
import bench_fallthrough
import bench_metrics
import bench_study
import dicomgen
from bench import archive
from bench.clients import dcmtk_env, find_latencies, measured, retrieve_seconds, send, send_parallel
from bench.peers import (
    DCMTK,
    ORTHANC,
    REPO,
    TICKS,
    BareSCP,
    BoxAgent,
    Dcmqrscp,
    EdgeAgent,
    Orthanc,
    Receiver,
    StoreSCP,
    cpu_seconds,
    free_port,
    peak_rss_mb,
    pin_to,
    rss_mb,
    wait_for,
)
from pydicom import dcmread

MODES = {"normal": None, "small-box": 0}  # the core everything is pinned to
PATHS = ("ingest", "senders", "move-get", "find", "forward", "retrieve", "idle", "big",
         "study", "metrics", "fall-through", "bandwidth")
DRIFT_LIMIT = 1.5
AGENT = "edge-agent"


@dataclass
class Compare:
    """The agent's figure against a reference (ratio = agent / reference), or against an
    absolute limit when ``value`` is None."""

    reference: str
    value: float | None
    limit: float | None = None

    def ratio(self, agent: float) -> float | None:
        """agent / reference, if there is a nonzero reference."""
        return agent / self.value if self.value else None

    def met(self, agent: float) -> bool | None:
        """Whether the target holds, if there is one."""
        if self.limit is None:
            return None
        figure = agent if self.value is None else self.ratio(agent)
        return figure is not None and figure <= self.limit * (1 + 1e-9)  # exactly 0.2 % counts


@dataclass
class Row:
    """One path: the agent's figure in ``unit`` and what it is compared with."""

    path: str
    unit: str
    agent: float
    compares: list[Compare] = field(default_factory=list)
    cpu: float | None = None
    rss: float | None = None


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


class Bench:
    """The data, the loaded archives and the measurements of one run."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.runs = workdir / "runs"
        self.runs.mkdir(parents=True, exist_ok=True)
        self._cache: dict[str, object] = {}

    # --- data, made on first use and shared by the modes

    def series(self) -> list[Path]:
        """The CT series of --count instances, one flat directory."""
        if "series" not in self._cache:
            directory = self.workdir / "series"
            self._cache["series"] = dicomgen.write_series(directory, self.args.count,
                                                          modality="CT", size=self.args.size)
        return self._cache["series"]  # type: ignore[return-value]

    def quarters(self) -> list[Path]:
        """The series split over four directories (hard links)."""
        if "quarters" not in self._cache:
            dirs = [self.workdir / f"quarter{n}" for n in range(4)]
            for directory in dirs:
                directory.mkdir()
            for number, path in enumerate(self.series()):
                os.link(path, dirs[number % 4] / path.name)
            self._cache["quarters"] = dirs
        return self._cache["quarters"]  # type: ignore[return-value]

    def time_receivers(self, kinds: dict[str, Callable[[Path], Receiver]],
                       sender: Callable[[Receiver], float], label: str
                       ) -> tuple[dict[str, float], float, float]:
        """Median seconds per receiver over --repeat rounds (fresh receivers, interleaved),
        with the agent's median CPU seconds and peak RSS over the sends."""
        times: dict[str, list[float]] = defaultdict(list)
        cpu: list[float] = []
        rss: list[float] = []
        for round_number in range(self.args.repeat):
            for name, make in kinds.items():
                target = self.runs / f"{name.split()[0]}-{time.monotonic_ns()}"
                with make(target) as receiver:
                    before = cpu_seconds(receiver.pid)
                    seconds = sender(receiver)
                    if name == AGENT:
                        cpu.append(cpu_seconds(receiver.pid) - before)
                        rss.append(peak_rss_mb(receiver.pid))
                    held = receiver.count()
                shutil.rmtree(target, ignore_errors=True)
                if held != self.args.count:
                    raise RuntimeError(f"{name} holds {held} of {self.args.count}")
                times[name].append(seconds)
                progress(f"{label}, round {round_number + 1}: {name} {seconds:.2f} s")
        return {name: median(v) for name, v in times.items()}, median(cpu), max(rss)

    # --- the paths

    def ingest(self) -> list[Row]:
        series = self.series()[0].parent
        kinds: dict[str, Callable[[Path], Receiver]] = {
            AGENT: EdgeAgent, "Orthanc": Orthanc, "storescp (DCMTK)": StoreSCP,
            "pynetdicom + fsync": BareSCP}
        rows = []
        for nagle in (True, False):
            label = (f"ingest {self.args.count} x {self.args.size}²,"
                     f" Nagle {'on' if nagle else 'off'}")
            medians, cpu, rss = self.time_receivers(
                kinds, lambda r, n=nagle: send(r, series, n), label)
            rows.append(Row(label, "s", medians[AGENT], [
                Compare("Orthanc", medians["Orthanc"], 0.7),
                Compare("storescp (DCMTK)", medians["storescp (DCMTK)"]),
                Compare("pynetdicom + fsync", medians["pynetdicom + fsync"], 1.2)], cpu, rss))
        return rows

    def senders(self) -> list[Row]:
        quarters = self.quarters()
        kinds: dict[str, Callable[[Path], Receiver]] = {
            AGENT: EdgeAgent, "Orthanc": Orthanc, "storescp (DCMTK)": StoreSCP}
        label = f"4 senders at once, {self.args.count // 4} each, Nagle off"
        medians, cpu, rss = self.time_receivers(
            kinds, lambda r: send_parallel(r, quarters, nagle=False), label)
        return [Row(label, "s", medians[AGENT], [
            Compare("Orthanc", medians["Orthanc"], 1.0),
            Compare("storescp (DCMTK, serial)", medians["storescp (DCMTK)"])], cpu, rss)]

    def forward(self) -> list[Row]:
        series, count = self.series()[0].parent, self.args.count
        rows = []
        for nagle in (True, False):
            label = f"store-and-forward {count} to Orthanc, Nagle {'on' if nagle else 'off'}"
            direct, through, cpu, rss = [], [], [], []
            for round_number in range(self.args.repeat):
                with Orthanc(self.runs / f"direct-{time.monotonic_ns()}") as orthanc:
                    started = time.perf_counter()
                    send(orthanc, series, nagle)
                    wait_for(lambda o=orthanc: o.count() >= count, 600, "Orthanc", 0.1)
                    direct.append(time.perf_counter() - started)
                with Orthanc(self.runs / f"pacs-{time.monotonic_ns()}") as orthanc:
                    peers = (f'\n[peers.PACS]\nae_title = "ORTHANC"\nhost = "127.0.0.1"\n'
                             f'port = {orthanc.port}\n\n[forward]\nto = ["PACS"]\n')
                    with EdgeAgent(self.runs / f"fwd-{time.monotonic_ns()}", peers) as agent:
                        before = cpu_seconds(agent.pid)
                        started = time.perf_counter()
                        send(agent, series, nagle)
                        wait_for(lambda o=orthanc: o.count() >= count, 600, "forwarding", 0.1)
                        through.append(time.perf_counter() - started)
                        cpu.append(cpu_seconds(agent.pid) - before)
                        rss.append(peak_rss_mb(agent.pid))
                progress(f"{label}, round {round_number + 1}: direct {direct[-1]:.2f} s,"
                         f" through the agent {through[-1]:.2f} s")
            rows.append(Row(label, "s", median(through), [
                Compare("direct: storescu → Orthanc", median(direct), 1.2)],
                median(cpu), max(rss)))
        self.clean_runs()
        return rows

    def metrics(self) -> list[Row]:
        """The metrics endpoint (bench_metrics.py): one scrape of an agent holding
        --metrics-instances with --metrics-queued waiting, against Orthanc's; the idle
        CPU of one scraped every 15 s, against the same agent without it."""
        per_study = 100
        options = argparse.Namespace(
            studies=max(1, self.args.metrics_instances // per_study), per_study=per_study,
            queued=self.args.metrics_queued, scrapes=100, idle_seconds=self.args.idle_seconds,
            every=15.0, warmup=75.0,
        )
        got = bench_metrics.measure(options, self.workdir / "metrics")
        size = f"{options.studies * per_study} instances, {options.queued} queued"
        return [
            Row(f"one /metrics scrape over HTTP ({size})", "ms", got["http"] * 1000,
                [Compare("Orthanc's metrics", got["orthanc"] * 1000)]),
            Row(f"one scrape's text built, peak allocated ({size})", "KiB",
                got["peak"] / 1024, []),
            Row(f"idle CPU % of a core, scraped every 15 s, {options.idle_seconds:g} s", "%",
                got["idle_on"], [Compare("absolute", None, 0.2),
                                 Compare("endpoint off", got["idle_off"]),
                                 Compare("Orthanc, scraped", got["idle_orthanc"])]),
            Row("the endpoint's CPU per scrape, in the agent", "ms", got["per_scrape"] * 1000, []),
        ]

    def fall_through(self) -> list[Row]:
        """Fall-through Q/R (bench_fallthrough.py): local C-FIND answers with it on, and
        a C-MOVE of a study only the PACS holds, through the agent."""
        options = argparse.Namespace(local_studies=20, queries=self.args.queries,
                                     move_count=self.args.move_count, size=256,
                                     repeat=self.args.repeat)
        got = bench_fallthrough.measure(options, self.runs / "fall-through")
        return [
            Row("C-FIND, last local answer, falling through to Orthanc", "ms",
                got["find_on"] * 1000, [Compare("archive only", got["find_off"] * 1000, 1.1)]),
            Row("C-FIND, last local answer, falling through to a PACS that is down", "ms",
                got["find_dead"] * 1000, [Compare("archive only", got["find_off"] * 1000, 1.1)]),
            Row(f"C-MOVE of {self.args.move_count} held only at Orthanc, through the agent",
                "s", got["move_through"],
                [Compare("Orthanc to the storescp itself", got["move_direct"], 1.3)]),
            Row("  its first instance at the storescp, through the agent", "s",
                got["first_through"], [Compare("Orthanc's first", got["first_direct"])]),
        ]

    def bandwidth(self) -> list[Row]:
        """The bandwidth cap (bench_bandwidth.py): the rate at a storescp over 20 s while
        the agent forwards with max_bytes_per_second set, against the cap (within 10 %)."""
        options = argparse.Namespace(caps="1000000,4000000,10000000", seconds=20.0,
                                     associations=2, size=self.args.size, count=None)
        return [
            Row(f"forwarding rate at a {got['cap'] / 1e6:g} MB/s cap, over 20 s", "x cap",
                got["ratio"], [Compare("absolute", None, 1.0 + bench_bandwidth.WITHIN)])
            for got in bench_bandwidth.measure(options, self.runs / "bandwidth")
        ]

    def study(self) -> list[Row]:
        """Acting per study (bench_study.py): how soon a study is complete after its last
        instance, and how soon a --count study is at Orthanc when sent per study."""
        quiet, count = 2.0, self.args.count
        got = bench_study.measure(self.runs, count=count, size=self.args.size, few=20,
                                  quiet=quiet, repeat=self.args.repeat, say=progress)
        return [
            Row("study complete after its last store, MPPS", "ms", got["mpps"] * 1000, []),
            Row(f"study complete after its last store, quiet rule ({quiet:g} s)", "s",
                got["quiet"], [Compare("quiet_seconds", quiet)]),
            Row(f"{count}-instance study at Orthanc, when = complete (MPPS)", "s",
                got["complete"], [Compare('when = "instance"', got["instance"])]),
        ]

    def find_state(self, studies: int, with_big: bool) -> dict[str, object]:
        """Directories of an agent and an Orthanc that hold ``studies`` studies (and the
        retrieve study if ``with_big``); the agent's is loaded here, Orthanc's on start."""
        key = f"find{studies}"
        if key not in self._cache:
            root = self.workdir / key
            started = time.perf_counter()
            files = archive.archive_files(root / "source", studies, self.args.per_study)
            state: dict[str, object] = {"root": root, "files": files, "loaded": False}
            if with_big:
                big, study_uid = archive.big_study(root / "source", self.args.move_count,
                                                   self.args.size)
                state.update(files=files + big, big=big, study_uid=study_uid)
            progress(f"generated {len(state['files'])} instances ({studies} studies"  # type: ignore[arg-type]
                     f"{' + the retrieve study' if with_big else ''})"
                     f" in {time.perf_counter() - started:.0f} s")
            seconds = archive.load_agent(root / "agent", root / "source")
            progress(f"loaded the agent: {seconds:.0f} s (copy + reindex)")
            self._cache[key] = state
        return self._cache[key]  # type: ignore[return-value]

    def find_and_move(self) -> list[Row]:
        """C-FIND on each archive size; C-MOVE and C-GET on the first (with ``move-get``).
        The agent and Orthanc hold the same archive; dcmqrscp only the retrieve study, as
        it keeps at most 500 studies (DB_UpperMaxStudies), so C-FIND has no DCMTK ratio."""
        rows: list[Row] = []
        destination = free_port()
        selected = self.args.paths
        for number, studies in enumerate(self.args.studies):
            with_big = number == 0 and "move-get" in selected
            if "find" not in selected and not with_big:
                continue
            state = self.find_state(studies, with_big)
            root = state["root"]
            assert isinstance(root, Path)
            peers = (f'\n[peers.BENCH]\nae_title = "BENCH"\nhost = "127.0.0.1"\n'
                     f'port = {destination}\nallow = ["echo", "find", "move", "get"]\n')
            orthanc = Orthanc(root / "orthanc", {"BENCH": ["BENCH", "127.0.0.1", destination]})
            dcmqrscp = Dcmqrscp(root / "dcmqrscp", {"BENCH": destination})
            with EdgeAgent(root / "agent", peers) as agent, orthanc, ExitStack() as stack:
                if not state["loaded"]:
                    seconds = archive.load_orthanc(orthanc, state["files"])  # type: ignore[arg-type]
                    progress(f"loaded Orthanc: {seconds:.0f} s (REST)")
                    state["loaded"] = True
                if "find" in selected:
                    rows += self.find((agent, orthanc), studies)
                if with_big:
                    stack.enter_context(dcmqrscp)
                    if not state.get("dcmqrscp_loaded"):
                        big = root / "source" / str(state["study_uid"])
                        measured([str(DCMTK / "storescu"), "-aec", dcmqrscp.ae_title, "+sd",
                                  "+r", "127.0.0.1", str(dcmqrscp.port), str(big)], dcmtk_env())
                        state["dcmqrscp_loaded"] = True
                    rows += self.move_get((agent, orthanc, dcmqrscp), state, destination)
        return rows

    def find(self, servers: tuple[EdgeAgent, Orthanc], studies: int) -> list[Row]:
        agent = servers[0]
        rows = []
        for label, queries in archive.query_sets(self.args.queries).items():
            latencies: dict[str, list[float]] = {}
            counts: dict[str, int] = {}
            before = cpu_seconds(agent.pid)
            for server in servers:
                latencies[server.name], counts[server.name] = find_latencies(
                    server.port, server.ae_title, queries)
            cpu = cpu_seconds(agent.pid) - before  # the agent is idle while Orthanc answers
            progress(f"C-FIND {label}, {studies} studies, answers to the first query: "
                     + ", ".join(f"{name} {count}" for name, count in counts.items()))
            name = f"C-FIND {label}, {studies} studies"
            for stat, function, limit in (("median", median, 0.8), ("p95", archive.p95, 1.0)):
                figures = {server: 1000 * function(values) for server, values in latencies.items()}
                rows.append(Row(f"{name}, {stat}", "ms", figures[AGENT],
                                [Compare("Orthanc", figures["Orthanc"], limit)],
                                cpu if stat == "median" else None, peak_rss_mb(agent.pid)))
        return rows

    def move_get(self, servers: tuple[EdgeAgent, Orthanc, Dcmqrscp], state: dict[str, object],
                 destination: int) -> list[Row]:
        study_uid, count = str(state["study_uid"]), self.args.move_count
        agent = servers[0]
        rows = []
        for kind in ("C-MOVE", "C-GET"):
            times: dict[str, list[float]] = defaultdict(list)
            cpu = []
            for round_number in range(self.args.repeat):
                for server in servers:
                    before = cpu_seconds(agent.pid)
                    times[server.name].append(retrieve_seconds(
                        kind, server, study_uid, destination, self.runs, count))
                    if server is agent:
                        cpu.append(cpu_seconds(agent.pid) - before)
                progress(f"{kind} {count}, round {round_number + 1}: " + ", ".join(
                    f"{name} {values[-1]:.2f} s" for name, values in times.items()))
            how = "to storescp (movescu)" if kind == "C-MOVE" else "by getscu"
            medians = {name: median(values) for name, values in times.items()}
            rows.append(Row(f"{kind} {count} x {self.args.size}² {how}", "s", medians[AGENT],
                            [Compare("Orthanc", medians["Orthanc"], 1.0),
                             Compare("dcmqrscp (DCMTK)", medians["dcmqrscp"])],
                            median(cpu), peak_rss_mb(agent.pid)))
        return rows

    def retrieve(self) -> list[Row]:
        """`edge-agent retrieve` against getscu and movescu, all from one Orthanc."""
        count = self.args.retrieve_count
        files = self.series()[:count]
        study_uid = study_uid_of(files[0])
        root = self.workdir / "retrieve"
        agent_port, movescu_port = free_port(), free_port()
        modalities = {"EDGE": ["EDGE", "127.0.0.1", agent_port],
                      "MOVESCU": ["MOVESCU", "127.0.0.1", movescu_port]}
        with Orthanc(root / "orthanc", modalities) as orthanc:
            if not self._cache.get("retrieve_loaded"):
                for path in files:
                    orthanc.rest("/instances", path.read_bytes())
                self._cache["retrieve_loaded"] = True
            config = root / "agent" / "agent.toml"
            config.parent.mkdir(parents=True, exist_ok=True)
            config.write_text(
                f'[agent]\nae_title = "EDGE"\nport = {agent_port}\nbind = "127.0.0.1"\n'
                f'data_dir = "{config.parent / "data"}"\nmin_free_mb = 0\n\n'
                f'[peers.PACS]\nae_title = "ORTHANC"\nhost = "127.0.0.1"\nport = {orthanc.port}\n'
                'allow = ["echo", "store"]\n')
            key = ["-k", f"StudyInstanceUID={study_uid}"]
            out = root / "out"
            edge = [sys.executable, "-m", "agent", "retrieve", "PACS", *key, "--config",
                    str(config)]
            runs = {
                "getscu (DCMTK)": [str(DCMTK / "getscu"), "-S", "-aec", "ORTHANC", "-od",
                                   str(out), "-k", "QueryRetrieveLevel=STUDY", *key,
                                   "127.0.0.1", str(orthanc.port)],
                "--get": [*edge, "--get"],
                "movescu (DCMTK)": [str(DCMTK / "movescu"), "-S", "-aet", "MOVESCU",
                                    "-aem", "MOVESCU", "-aec", "ORTHANC", "+P",
                                    str(movescu_port), "-od", str(out),
                                    "-k", "QueryRetrieveLevel=STUDY", *key,
                                    "127.0.0.1", str(orthanc.port)],
                "--move": [*edge, "--move"],
            }
            env = {**dcmtk_env(), "PYTHONPATH": str(REPO)}
            results: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
            for round_number in range(self.args.repeat):
                for name, command in runs.items():
                    shutil.rmtree(out, ignore_errors=True)
                    out.mkdir(parents=True)
                    shutil.rmtree(config.parent / "data", ignore_errors=True)
                    expect = f"{count} instances retrieved" if name.startswith("--") else None
                    run = measured(command, env, expect=expect)
                    if "DCMTK" in name and sum(1 for _ in out.iterdir()) != count:
                        raise RuntimeError(f"{name} received {len(list(out.iterdir()))} files")
                    results[name].append((run.seconds, run.cpu, run.rss_mb))
                progress(f"retrieve {count}, round {round_number + 1}: " + ", ".join(
                    f"{name} {values[-1][0]:.2f} s" for name, values in results.items()))
        shutil.rmtree(out, ignore_errors=True)
        rows = []
        for how, reference, limit in (("--get", "getscu (DCMTK)", 2.0),
                                      ("--move", "movescu (DCMTK)", None)):
            mine = results[how]
            rows.append(Row(f"edge-agent retrieve {how}, {count} from Orthanc", "s",
                            median([r[0] for r in mine]),
                            [Compare(reference, median([r[0] for r in results[reference]]),
                                     limit)],
                            median([r[1] for r in mine]), max(r[2] for r in mine)))
        return rows

    def idle(self) -> list[Row]:
        """All servers idle side by side over one window."""
        seconds = self.args.idle_seconds
        root = self.runs / f"idle-{time.monotonic_ns()}"
        servers: list[Receiver] = [EdgeAgent(root / "agent"), BoxAgent(root / "box"),
                                   Orthanc(root / "orthanc"), StoreSCP(root / "storescp"),
                                   Dcmqrscp(root / "dcmqrscp")]
        try:
            with ExitStack() as stack:
                for server in servers:
                    stack.enter_context(server)
                time.sleep(3)  # let start-up work finish
                before = {s.name: cpu_seconds(s.pid) for s in servers}
                time.sleep(seconds)
                share = {s.name: 100 * (cpu_seconds(s.pid) - before[s.name]) / seconds
                         for s in servers}
                memory = {s.name: rss_mb(s.pid) for s in servers}
        finally:
            shutil.rmtree(root, ignore_errors=True)
        references = [Compare(f"{name} (RSS {memory[name]:.0f} MB)", share[name])
                      for name in ("Orthanc", "storescp", "dcmqrscp")]
        resolution = 100 / TICKS / seconds
        labels = {AGENT: AGENT, BoxAgent.name: "agent + LEDs, console"}
        return [Row(f"idle CPU % of a core, {seconds:g} s (±{resolution:.3f}): {labels[name]}",
                    "%", share[name],
                    [Compare("absolute", None, 0.2), *references],
                    share[name] * seconds / 100, memory[name])
                for name in (AGENT, BoxAgent.name)]

    def big(self) -> list[Row]:
        size_mb = self.args.big_mb
        big = dicomgen.large_instance(self.workdir / "big.dcm", size_mb * 1048576)
        target = self.runs / "agent-big"
        try:
            with EdgeAgent(target) as agent:
                before = cpu_seconds(agent.pid)
                seconds = send(agent, big, nagle=False)
                cpu = cpu_seconds(agent.pid) - before
                rss = peak_rss_mb(agent.pid)
                if agent.count() != 1:
                    raise RuntimeError("the large instance did not arrive")
        finally:
            shutil.rmtree(target, ignore_errors=True)
            big.unlink()
        return [Row(f"receive one {size_mb} MB instance (peak RSS, MB)", "MB", rss,
                    [Compare("absolute", None, 80.0)], cpu, rss),
                Row(f"receive one {size_mb} MB instance (time)", "s", seconds, [], None, None)]

    def clean_runs(self) -> None:
        shutil.rmtree(self.runs, ignore_errors=True)
        self.runs.mkdir()

    def mode(self, name: str) -> list[Row]:
        """Every selected path in one mode."""
        pin_to(MODES[name])
        rows: list[Row] = []
        try:
            steps: list[tuple[str, Callable[[], list[Row]]]] = [
                ("ingest", self.ingest), ("senders", self.senders),
                ("forward", self.forward), ("retrieve", self.retrieve),
                ("study", self.study), ("metrics", self.metrics),
                ("fall-through", self.fall_through), ("bandwidth", self.bandwidth),
            ]
            for path, step in steps:
                if path in self.args.paths:
                    rows += step()
                    self.clean_runs()
            if {"find", "move-get"} & set(self.args.paths):
                rows += self.find_and_move()
                self.clean_runs()
            if "idle" in self.args.paths:
                rows += self.idle()
            if "big" in self.args.paths and not self.args.skip_big:
                rows += self.big()
        finally:
            pin_to(None)
        return rows


def study_uid_of(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def progress(message: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')} {message}", flush=True)


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return ""
    if unit == "%":
        return f"{value:.3f} %"
    return f"{value:.1f} {unit}" if unit in ("ms", "MB") else f"{value:.2f} {unit}"


def print_table(mode: str, rows: list[Row], normal: dict[tuple[str, str], float] | None) -> None:
    """The table of one mode; with ``normal``, each ratio against its normal-mode value."""
    drift = normal is not None
    header = (f"{'path':<58} {'agent':>10}  {'against':<27} {'value':>10} {'ratio':>6}"
              f" {'target':>8} {'verdict':<8} {'CPU s':>6} {'RSS MB':>6}")
    if drift:
        header += f"  ratio vs normal (<= {DRIFT_LIMIT}x)"
    print(f"\n== {mode} ==")
    print(header)
    print("-" * len(header))
    for row in rows:
        compares = row.compares or [Compare("", None)]
        for index, compare in enumerate(compares):
            first = index == 0
            ratio = compare.ratio(row.agent)
            met = compare.met(row.agent)
            verdict = "" if met is None else "met" if met else "NOT met"
            if compare.limit is None:
                target = ""
            elif compare.value is None:
                target = f"<= {compare.limit:g}"
            else:
                target = f"<= {compare.limit:.2f}x"
            agent = fmt(row.agent, row.unit) if first else ""
            line = (f"{row.path if first else '':<58} {agent:>10}"
                    f"  {compare.reference:<27} {fmt(compare.value, row.unit):>10}"
                    f" {'' if ratio is None else f'{ratio:.2f}':>6} {target:>8} {verdict:<8}"
                    f" {f'{row.cpu:.2f}' if first and row.cpu is not None else '':>6}"
                    f" {f'{row.rss:.0f}' if first and row.rss is not None else '':>6}")
            if drift and ratio is not None:
                before = normal.get((row.path, compare.reference))
                if before:
                    change = ratio / before
                    line += (f"  {change:.2f} ({before:.2f} → {ratio:.2f})"
                             f" {'ok' if change <= DRIFT_LIMIT else 'WORSE'}")
            print(line.rstrip())
    verdicts = [c.met(row.agent) for row in rows for c in row.compares]
    met = sum(1 for v in verdicts if v)
    summary = f"{mode}: targets met {met} of {sum(1 for v in verdicts if v is not None)}"
    if drift:
        assert normal is not None
        changes = [r / normal[key] for key, r in ratios(rows).items() if normal.get(key)]
        summary += (f"; ratios within {DRIFT_LIMIT}x of normal mode:"
                    f" {sum(1 for c in changes if c <= DRIFT_LIMIT)} of {len(changes)}")
    print(summary)


def ratios(rows: list[Row]) -> dict[tuple[str, str], float]:
    return {(row.path, c.reference): r for row in rows for c in row.compares
            if (r := c.ratio(row.agent)) is not None}


def versions() -> str:
    def first_line(command: list[str]) -> str:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=30)
        except OSError as exc:
            return str(exc)
        return (done.stdout or done.stderr).strip().splitlines()[0]

    import pydicom
    import pynetdicom

    return (f"{first_line([str(ORTHANC), '--version'])}; "
            f"{first_line([str(DCMTK / 'storescu'), '--version'])}; "
            f"pynetdicom {pynetdicom.__version__}, pydicom {pydicom.__version__},"
            f" Python {sys.version.split()[0]}")


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--modes", default="normal,small-box",
                        help="comma-separated: normal, small-box (default both)")
    parser.add_argument("--paths", default=",".join(PATHS),
                        help=f"comma-separated, of: {', '.join(PATHS)} (default all)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per timed figure")
    parser.add_argument("--count", type=int, default=500,
                        help="instances to ingest and forward (4 senders: a quarter each)")
    parser.add_argument("--size", type=int, default=512, help="rows and columns per image")
    parser.add_argument("--move-count", type=int, default=300, help="instances to C-MOVE/C-GET")
    parser.add_argument("--retrieve-count", type=int, default=200,
                        help="instances for edge-agent retrieve")
    parser.add_argument("--studies", default="2000,10000",
                        help="archive sizes for C-FIND, comma-separated")
    parser.add_argument("--per-study", type=int, default=1, help="instances per C-FIND study")
    parser.add_argument("--queries", type=int, default=50, help="C-FIND queries per figure")
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument("--metrics-instances", type=int, default=100_000)
    parser.add_argument("--metrics-queued", type=int, default=1000)
    parser.add_argument("--big-mb", type=int, default=1024)
    parser.add_argument("--skip-big", action="store_true", help="skip the 1 GB instance")
    parser.add_argument("--workdir", type=Path, help="kept afterwards (default: a temp dir)")
    args = parser.parse_args()
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    args.paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    args.studies = [int(s) for s in args.studies.split(",") if s.strip()]
    for name, chosen, allowed in (("mode", args.modes, MODES), ("path", args.paths, PATHS)):
        unknown = set(chosen) - set(allowed)
        if unknown:
            parser.error(f"unknown {name}: {', '.join(sorted(unknown))}")
    if args.count % 4:
        parser.error("--count must be a multiple of 4 (four senders)")

    print("command:", shlex.join([sys.executable, *sys.argv]))
    print(f"started {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, {os.cpu_count()} cores,"
          f" load average {load()}")
    print(versions(), flush=True)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-all-"))
    workdir.mkdir(parents=True, exist_ok=True)
    tables: dict[str, list[Row]] = {}
    try:
        bench = Bench(args, workdir)
        for mode in args.modes:
            started = time.perf_counter()
            print(f"\n-- {mode}: load average {load()}", flush=True)
            tables[mode] = bench.mode(mode)
            print(f"-- {mode}: {time.perf_counter() - started:.0f} s, load average {load()}",
                  flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\ncommand: {shlex.join([sys.executable, *sys.argv])}")
    normal = ratios(tables["normal"]) if "normal" in tables else None
    for mode, rows in tables.items():
        print_table(mode + (" (everything pinned to core 0 by taskset)" if MODES[mode] is not None
                            else ""), rows, normal if mode != "normal" else None)
    print(f"\nfinished {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, load average {load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
