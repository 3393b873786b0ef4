"""What an idle server costs on a small box: CPU and resident memory, side by side.

The agent runs twice (bare, and as on the box: four LEDs on gpiozero's mock pins and
the serial console on a pseudo-terminal), beside DCMTK's storescp and dcmqrscp and
Orthanc, all idle in the same window. A Pi spends most of its life like this.

    .venv/bin/python scripts/bench_idle.py [--seconds 30]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench.peers import DCMTK, EdgeAgent, Orthanc, Receiver, StoreSCP

TICKS = os.sysconf("SC_CLK_TCK")


class BoxAgent(EdgeAgent):
    """The agent with what the box adds: LEDs (mock pins) and a console (a pty)."""

    name = "edge-agent, LEDs + console"

    def __init__(self, workdir: Path) -> None:
        self.master, slave = os.openpty()
        console = f'\n[leds]\nheartbeat = 17\nlink = 27\nactivity = 22\nfault = 23\n' \
                  f'\n[console]\ndevice = "{os.ttyname(slave)}"\n'
        super().__init__(workdir, peers=console)

    def environment(self) -> dict[str, str]:
        env = super().environment()
        env["GPIOZERO_PIN_FACTORY"] = "mock"
        return env


class Dcmqrscp(Receiver):
    """DCMTK's query/retrieve SCP over an empty database."""

    name = "dcmqrscp"

    def command(self) -> list[str]:
        storage = self.workdir / "db"
        storage.mkdir(exist_ok=True)
        config = self.workdir / "dcmqrscp.cfg"
        config.write_text(
            f"NetworkTCPPort = {self.port}\nMaxPDUSize = 16384\nMaxAssociations = 16\n"
            "HostTable BEGIN\nHostTable END\nVendorTable BEGIN\nVendorTable END\n"
            f"AETable BEGIN\nQR {storage} RW (200, 1024mb) ANY\nAETable END\n"
        )
        return [str(DCMTK / "dcmqrscp"), "-c", str(config)]


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int) -> float:
    """Resident memory now, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="measuring window")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp, contextlib.ExitStack() as stack:
        root = Path(tmp)
        servers: list[Receiver] = [
            EdgeAgent(root / "agent"),
            BoxAgent(root / "box"),
            StoreSCP(root / "storescp"),
            Dcmqrscp(root / "dcmqrscp"),
            Orthanc(root / "orthanc"),
        ]
        for server in servers:
            stack.enter_context(server)
        time.sleep(3)  # let start-up work finish
        pids = {server.name: server.proc.pid for server in servers if server.proc}
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        time.sleep(args.seconds)
        used = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
        memory = {name: rss_mb(pid) for name, pid in pids.items()}
    orthanc = used["Orthanc"] or 1 / TICKS
    resolution = 100 / TICKS / args.seconds
    print(f"idle for {args.seconds:g} s, CPU in % of one core (resolution {resolution:.3f} %)")
    print(f"{'server':<28} {'CPU %':>7} {'vs Orthanc':>11} {'RSS MB':>8}")
    for name in pids:
        share = 100 * used[name] / args.seconds
        print(f"{name:<28} {share:7.3f} {used[name] / orthanc:10.2f}x {memory[name]:8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
