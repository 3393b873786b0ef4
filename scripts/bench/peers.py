"""Peers and the agent, started on loopback with their own storage, for the benchmarks
and the test suite alike (tests/support.py builds on this module): the agent, DCMTK's
storescp and dcmqrscp, Orthanc and a bare pynetdicom receiver. Every one is a context
manager that always stops what it started. ``pin_to`` makes every
command started from here (servers and clients) run under taskset on one core; the
/proc readers give a process's CPU seconds and memory.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DCMTK = Path("/usr/bin")  # pynetdicom's same-named scripts shadow DCMTK's on PATH
ORTHANC = Path("/usr/sbin/Orthanc")
TASKSET = Path("/usr/bin/taskset")
TICKS = os.sysconf("SC_CLK_TCK")
_pin: list[str] = []


def pin_to(core: int | None) -> None:
    """Run every command started through ``pinned`` on ``core`` (None: anywhere)."""
    _pin[:] = [] if core is None else [str(TASKSET), "-c", str(core)]


def pinned(command: list[str]) -> list[str]:
    """``command`` behind taskset when pinning is on (taskset execs: the pid is kept)."""
    return [*_pin, *command]


def pinned_core() -> int | None:
    """The core commands are pinned to, if any."""
    return int(_pin[-1]) if _pin else None


def free_port() -> int:
    """An ephemeral loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll until ``condition()`` is truthy and return its value, or raise TimeoutError
    after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(interval)


def agent_env() -> dict[str, str]:
    """Environment for a child agent: this checkout's package first, no stray config or
    systemd notification socket of whoever runs us."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    for name in ("EDGE_AGENT_CONFIG", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        env.pop(name, None)
    return env


def agent_command(config: Path) -> list[str]:
    """``edge-agent run`` on ``config``, by this interpreter."""
    return [sys.executable, "-m", "agent", "run", "--config", str(config)]


def published_serving(data_dir: Path, pid: int) -> dict[str, Any] | None:
    """The agent's published status if the process ``pid`` says it is serving (a file
    left by an earlier run in the same directory does not count)."""
    try:
        status = json.loads((data_dir / "run" / "status.json").read_text())
    except (OSError, ValueError):
        return None
    serving = status.get("state") == "serving" and status.get("pid") == pid
    return status if serving else None


def terminate(proc: subprocess.Popen[bytes], grace: float = 20.0) -> int:
    """SIGTERM, wait ``grace`` seconds, then SIGKILL; the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return int(proc.returncode)


def process_tree(pid: int) -> list[int]:
    """A process and its live descendants (the agent's forwarding process, for one)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            children = task.read_text().split()
        except OSError:
            continue
        for child in children:
            found += process_tree(int(child))
    return found


def _status_mb(pid: int, field: str) -> float:
    """One /proc status field in MB, summed over the process tree."""
    total = 0
    for member in process_tree(pid):
        try:
            lines = Path(f"/proc/{member}/status").read_text().splitlines()
        except OSError:
            continue
        total += sum(int(line.split()[1]) for line in lines if line.startswith(field + ":"))
    return total / 1024 if total else float("nan")


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory (VmHWM) of a running process and its children, in MB."""
    return _status_mb(pid, "VmHWM")


def rss_mb(pid: int) -> float:
    """Resident memory now (VmRSS), in MB, children included."""
    return _status_mb(pid, "VmRSS")


def cpu_seconds(pid: int, children: bool = True) -> float:
    """User plus system CPU time of a process, all its threads, and (by default) of its
    children: live ones, and those it has waited for."""
    ticks = 0
    for member in process_tree(pid) if children else [pid]:
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
        if children:
            ticks += int(fields[13]) + int(fields[14])
    return ticks / TICKS


class Receiver:
    """A child process that receives DICOM on loopback."""

    name = "receiver"
    ae_title = "ANY"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        """The command line that starts the receiver."""
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        """Its environment."""
        return dict(os.environ)

    def ready(self) -> bool:
        """True once it accepts associations."""
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def count(self) -> int:
        """How many instances it holds."""
        raise NotImplementedError

    def new_ports(self) -> None:
        """Pick fresh ports (after a start that failed, perhaps on a port taken since)."""
        self.port = free_port()

    def __enter__(self) -> Receiver:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for attempt in range(3):
            if attempt:
                self.new_ports()
            with (self.workdir / "log.txt").open("ab") as log:
                self.proc = subprocess.Popen(pinned(self.command()), stdout=log, stderr=log,
                                             env=self.environment(), cwd=self.workdir)
            try:
                wait_for(lambda: self.proc.poll() is not None or self.ready(), 60, self.name)
            except BaseException:
                self.__exit__()
                raise
            if self.proc.poll() is None:
                return self
        tail = (self.workdir / "log.txt").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{self.name} exited at start ({self.proc.returncode}):\n{tail}")

    @property
    def pid(self) -> int:
        """The receiver's process id (it is running)."""
        assert self.proc is not None
        return self.proc.pid

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            terminate(self.proc)


class EdgeAgent(Receiver):
    """The agent, open to echo and store from any AE, with no free-space floor."""

    name = "edge-agent"
    ae_title = "EDGE"

    def __init__(self, workdir: Path, peers: str = "") -> None:
        super().__init__(workdir)
        self.peers = peers  # extra [peers.X] tables, as TOML text

    def command(self) -> list[str]:
        config = self.workdir / "agent.toml"
        config.write_text(
            f'[agent]\nae_title = "EDGE"\nport = {self.port}\nbind = "127.0.0.1"\n'
            f'data_dir = "{self.workdir / "data"}"\nmin_free_mb = 0\n'
            'allow_unknown = ["echo", "store"]\n' + self.peers
        )
        return agent_command(config)

    def environment(self) -> dict[str, str]:
        return agent_env()

    def ready(self) -> bool:
        status = published_serving(self.workdir / "data", self.pid)
        if status is None:
            return False
        # forwarding is measured from when the forwarding process answers, not its start-up
        if "[forward]" in self.peers and not status.get("forwarder_pid"):
            return False
        return super().ready()

    def count(self) -> int:
        return sum(1 for _ in (self.workdir / "data/archive").rglob("*.dcm"))


class StoreSCP(Receiver):
    """DCMTK's storescp writing every instance to a directory."""

    name = "storescp"
    ae_title = "STORESCP"

    def command(self) -> list[str]:
        (self.workdir / "out").mkdir(exist_ok=True)
        return [str(DCMTK / "storescp"), "-aet", self.ae_title, "-od",
                str(self.workdir / "out"), str(self.port)]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["TCP_NODELAY"] = "1"  # storescp at its best, as Orthanc
        return env

    def count(self) -> int:
        return sum(1 for _ in (self.workdir / "out").iterdir())


class Orthanc(Receiver):
    """Orthanc with its own storage, REST on loopback only, open to any AE."""

    name = "Orthanc"
    ae_title = "ORTHANC"

    def __init__(self, workdir: Path, modalities: dict[str, Any] | None = None,
                 tls: dict[str, Any] | None = None) -> None:
        super().__init__(workdir)
        self.http_port = free_port()
        self.modalities = modalities or {}
        # DICOM TLS on its DICOM port: {"certificate", "private_key", "trusted"} paths and
        # optionally "client_certificate_required"; modalities then take "UseDicomTls"
        self.tls = tls

    def command(self) -> list[str]:
        config = {
            "Name": "bench", "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"), "DicomAet": self.ae_title,
            "DicomPort": self.port, "HttpPort": self.http_port, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True, "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowGet": True, "DicomAlwaysAllowMove": True,
            "DicomModalities": self.modalities, "HttpServerEnabled": True,
            "Plugins": [], "StableAge": 3600,
        }
        if self.tls is not None:
            config.update({
                "DicomTlsEnabled": True, "DicomTlsCertificate": str(self.tls["certificate"]),
                "DicomTlsPrivateKey": str(self.tls["private_key"]),
                "DicomTlsTrustedCertificates": str(self.tls["trusted"]),
                "DicomTlsRemoteCertificateRequired":
                    bool(self.tls.get("client_certificate_required", True)),
            })
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(config, indent=1))
        return [str(ORTHANC), str(path)]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["TCP_NODELAY"] = "1"
        return env

    def new_ports(self) -> None:
        super().new_ports()
        self.http_port = free_port()

    def rest(self, path: str, data: bytes | None = None, timeout: float = 60) -> Any:
        """GET (or POST ``data`` to) the REST API and decode the JSON answer."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=data)
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return json.loads(answer.read() or b"null")

    def ready(self) -> bool:
        try:
            self.rest("/system", timeout=2)
        except OSError:
            return False
        return super().ready()

    def count(self) -> int:
        return int(self.rest("/statistics")["CountInstances"])


class BoxAgent(EdgeAgent):
    """The agent with what the box adds: LEDs (mock pins) and a console (a pty)."""

    name = "edge-agent, LEDs + console"

    def __init__(self, workdir: Path) -> None:
        self.master, slave = os.openpty()
        self.slave = slave
        console = f'\n[leds]\nheartbeat = 17\nlink = 27\nactivity = 22\nfault = 23\n' \
                  f'\n[console]\ndevice = "{os.ttyname(slave)}"\n'
        super().__init__(workdir, peers=console)

    def environment(self) -> dict[str, str]:
        env = super().environment()
        env["GPIOZERO_PIN_FACTORY"] = "mock"
        return env

    def __exit__(self, *exc: object) -> None:
        try:
            super().__exit__(*exc)
        finally:
            os.close(self.master)
            os.close(self.slave)


class BareSCP(Receiver):
    """A bare pynetdicom receiver that fsyncs each file: ``bench/bare_scp.py``."""

    name = "pynetdicom + fsync"
    ae_title = "BARE"

    def command(self) -> list[str]:
        return [sys.executable, str(Path(__file__).with_name("bare_scp.py")), str(self.port),
                str(self.workdir / "out")]

    def count(self) -> int:
        return sum(1 for _ in (self.workdir / "out").iterdir())


class Dcmqrscp(Receiver):
    """DCMTK's query/retrieve SCP (AE QR) over its own database, which accepts stores and
    keeps at most 500 studies of 1 GB (DCMTK's own limits);
    ``destinations`` are the AEs it may C-MOVE to, as {AE: port} on loopback."""

    name = "dcmqrscp"
    ae_title = "QR"

    def __init__(self, workdir: Path, destinations: dict[str, int] | None = None) -> None:
        super().__init__(workdir)
        self.destinations = destinations or {}

    def command(self) -> list[str]:
        storage = self.workdir / "db"
        storage.mkdir(exist_ok=True)
        hosts = "".join(f"{ae} = ({ae}, 127.0.0.1, {port})\n"
                        for ae, port in self.destinations.items())
        config = self.workdir / "dcmqrscp.cfg"
        config.write_text(
            f"NetworkTCPPort = {self.port}\nMaxPDUSize = 16384\nMaxAssociations = 16\n"
            f"HostTable BEGIN\n{hosts}HostTable END\nVendorTable BEGIN\nVendorTable END\n"
            f"AETable BEGIN\nQR {storage} RW (500, 1024mb) ANY\nAETable END\n"
        )
        return [str(DCMTK / "dcmqrscp"), "-c", str(config)]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["TCP_NODELAY"] = "1"
        return env

    def count(self) -> int:
        return sum(1 for p in (self.workdir / "db").iterdir() if p.name != "index.dat")
