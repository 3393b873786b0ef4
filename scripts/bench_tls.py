#!/usr/bin/env python3
"""What DICOM TLS costs: the same work plain and over TLS, side by side, in one run.

    python scripts/bench_tls.py [--count 300] [--size 64] [--repeat 5] [--workdir DIR]

Three paths, each plain and TLS within every round (fresh receivers, interleaved):
ingest by DCMTK's storescu into the agent (its plain port vs its TLS port, with a client
certificate), the same storescu into Orthanc 1.10.1 (plain vs `DicomTlsEnabled`), and
store-and-forward: storescu into the agent's plain port until Orthanc holds every
instance, with the PACS peer plain vs `tls = true`. Senders have Nagle off
(TCP_NODELAY=1), as in bench_all.py. Certificates come from tests/certs.py (a test CA,
RSA 2048). Times are medians of --repeat rounds; the agent's CPU seconds (its
forwarding process included) are medians too. Ratios: TLS / plain (of the medians, and
the median of each round's own ratio), and agent / Orthanc.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import dicomgen
from bench.clients import dcmtk_env, measured, storescu
from bench.peers import EdgeAgent, Orthanc, Receiver, cpu_seconds, free_port, wait_for
from bench_all import load, versions

from tests.certs import Pki, make_pki


class TlsEdgeAgent(EdgeAgent):
    """The agent with a `[tls]` table: a TLS listener beside the plain one, and the
    certificate it presents to TLS peers."""

    name = "edge-agent TLS"

    def __init__(self, workdir: Path, pki: Pki, peers: str = "") -> None:
        super().__init__(workdir, peers)
        self.pki = pki
        self.tls_port = free_port()

    def new_ports(self) -> None:
        super().new_ports()
        self.tls_port = free_port()

    def command(self) -> list[str]:
        command = super().command()
        config = self.workdir / "agent.toml"
        config.write_text(config.read_text() + (
            f'\n[tls]\ncertificate = "{self.pki.agent.cert}"\n'
            f'private_key = "{self.pki.agent.key}"\nca = "{self.pki.ca}"\n'
            f"port = {self.tls_port}\n"))
        return command


def orthanc_tls(pki: Pki) -> dict[str, object]:
    """Orthanc's DICOM TLS settings: the client's certificate (it names 127.0.0.1)."""
    return {"certificate": pki.client.cert, "private_key": pki.client.key, "trusted": pki.ca}


def send(receiver: Receiver, source: Path, port: int, pki: Pki | None) -> float:
    """storescu ``source`` over one association, plain or (``pki``) over TLS."""
    command = storescu(receiver.ae_title, port, source)
    if pki is not None:
        command[1:1] = ["+tls", str(pki.client.key), str(pki.client.cert), "+cf", str(pki.ca)]
    return measured(command, dcmtk_env(nagle=False)).seconds


def forward_peers(orthanc: Orthanc, tls: bool) -> str:
    """The PACS peer (Orthanc) and `[forward]` to it."""
    return (f'\n[peers.PACS]\nae_title = "ORTHANC"\nhost = "127.0.0.1"\nport = {orthanc.port}\n'
            f'tls = {"true" if tls else "false"}\n\n[forward]\nto = ["PACS"]\n')


class TlsBench:
    """The runs of one invocation and what they measured."""

    def __init__(self, args: argparse.Namespace, workdir: Path, pki: Pki) -> None:
        self.args = args
        self.workdir = workdir
        self.pki = pki
        self.series = dicomgen.write_series(workdir / "series", args.count, modality="CT",
                                            size=args.size)[0].parent
        self.seconds: dict[str, list[float]] = defaultdict(list)
        self.cpu: dict[str, list[float]] = defaultdict(list)

    def fresh(self, name: str) -> Path:
        return self.workdir / "runs" / f"{name}-{time.monotonic_ns()}"

    def record(self, name: str, seconds: float, cpu: float | None = None) -> None:
        self.seconds[name].append(seconds)
        if cpu is not None:
            self.cpu[name].append(cpu)
        progress(f"{name}: {seconds:.2f} s" + ("" if cpu is None else f", agent CPU {cpu:.2f} s"))

    def ingest_agent(self, tls: bool) -> None:
        agent = TlsEdgeAgent(self.fresh("agent"), self.pki)
        with agent:
            before = cpu_seconds(agent.pid)
            port, pki = (agent.tls_port, self.pki) if tls else (agent.port, None)
            seconds = send(agent, self.series, port, pki)
            self.check(agent.count(), "the agent")
            self.record(f"ingest agent {'TLS' if tls else 'plain'}", seconds,
                        cpu_seconds(agent.pid) - before)

    def ingest_orthanc(self, tls: bool) -> None:
        with Orthanc(self.fresh("orthanc"), tls=orthanc_tls(self.pki) if tls else None) as pacs:
            seconds = send(pacs, self.series, pacs.port, self.pki if tls else None)
            self.check(pacs.count(), "Orthanc")
            self.record(f"ingest Orthanc {'TLS' if tls else 'plain'}", seconds)

    def forward(self, tls: bool) -> None:
        count = self.args.count
        pacs = Orthanc(self.fresh("pacs"), tls=orthanc_tls(self.pki) if tls else None)
        with pacs, TlsEdgeAgent(self.fresh("fwd"), self.pki, forward_peers(pacs, tls)) as agent:
            before = cpu_seconds(agent.pid)
            started = time.perf_counter()
            send(agent, self.series, agent.port, None)
            wait_for(lambda: pacs.count() >= count, 600, "forwarding", 0.05)
            seconds = time.perf_counter() - started
            self.record(f"forward {'TLS' if tls else 'plain'}", seconds,
                        cpu_seconds(agent.pid) - before)

    def check(self, held: int, who: str) -> None:
        if held != self.args.count:
            raise RuntimeError(f"{who} holds {held} of {self.args.count}")

    def run(self) -> None:
        steps: list[Callable[[bool], None]] = [self.ingest_agent, self.ingest_orthanc,
                                               self.forward]
        for number in range(self.args.repeat):
            progress(f"round {number + 1} of {self.args.repeat}, load average {load()}")
            for step in steps:
                for tls in (False, True):
                    step(tls)
                shutil.rmtree(self.workdir / "runs", ignore_errors=True)

    def median(self, name: str) -> float:
        return statistics.median(self.seconds[name])

    def paired(self, key: str) -> float:
        """The median of each round's TLS / plain: plain and TLS ran back to back, so this
        holds up better than the ratio of medians when the machine's load drifts."""
        pairs = zip(self.seconds[f"{key} plain"], self.seconds[f"{key} TLS"], strict=True)
        return statistics.median(tls / plain for plain, tls in pairs)

    def table(self) -> list[str]:
        """The figures and their ratios, one line each."""
        n = self.args.count
        lines = [f"{'path':<34} {'plain':>8} {'TLS':>8} {'TLS/plain':>9}"
                 f" {'per round':>9} {'agent CPU plain/TLS':>20}"]
        for label, key in ((f"ingest {n} into the agent", "ingest agent"),
                           (f"ingest {n} into Orthanc", "ingest Orthanc"),
                           (f"forward {n} agent -> Orthanc", "forward")):
            plain, tls = self.median(f"{key} plain"), self.median(f"{key} TLS")
            cpu = ""
            if self.cpu.get(f"{key} plain"):
                cpu = (f"{statistics.median(self.cpu[f'{key} plain']):.2f} /"
                       f" {statistics.median(self.cpu[f'{key} TLS']):.2f} s")
            lines.append(f"{label:<34} {plain:>7.2f}s {tls:>7.2f}s {tls / plain:>9.2f}"
                         f" {self.paired(key):>9.2f} {cpu:>20}")
        for mode in ("plain", "TLS"):
            agent, orthanc = self.median(f"ingest agent {mode}"), self.median(
                f"ingest Orthanc {mode}")
            lines.append(f"ingest agent / Orthanc, {mode:<5}: {agent / orthanc:.2f}"
                         f" ({agent:.2f} s vs {orthanc:.2f} s)")
        lines.append(f"instances per second over TLS: agent ingest "
                     f"{n / self.median('ingest agent TLS'):.0f}, Orthanc ingest "
                     f"{n / self.median('ingest Orthanc TLS'):.0f}, forwarding "
                     f"{n / self.median('forward TLS'):.0f}")
        return lines


def progress(message: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')} {message}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300, help="instances per run")
    parser.add_argument("--size", type=int, default=64, help="rows and columns per image")
    parser.add_argument("--repeat", type=int, default=5, help="rounds; figures are medians")
    parser.add_argument("--workdir", type=Path, help="kept afterwards (default: a temp dir)")
    args = parser.parse_args()
    command = shlex.join([sys.executable, *sys.argv])
    print("command:", command)
    print(f"started {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, {os.cpu_count()} cores,"
          f" load average {load()}")
    print(versions(), flush=True)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-tls-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        bench = TlsBench(args, workdir, make_pki(workdir / "pki"))
        bench.run()
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\ncommand: {command}")
    print(f"{args.count} x {args.size}x{args.size} CT, medians of {args.repeat} rounds,"
          " storescu Nagle off")
    print("\n".join(bench.table()))
    print(f"finished {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, load average {load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
