"""Test support: real DCMTK tools, agents in-process and as child processes, configs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

# pynetdicom installs console scripts called storescu, findscu... that shadow DCMTK's on
# PATH; the real DCMTK tools live in the system directories.
DCMTK_DIRS = ("/usr/bin", "/usr/local/bin")


def dcmtk(tool: str) -> str:
    """Absolute path of a DCMTK tool (never pynetdicom's namesake)."""
    for directory in DCMTK_DIRS:
        candidate = Path(directory, tool)
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise RuntimeError(f"DCMTK's {tool} is not installed (apt-get install dcmtk)")


def free_port() -> int:
    """An ephemeral port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    """Poll ``condition`` until it is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.02)


def toml_value(value: Any) -> str:
    """A Python value as TOML (enough for our configs)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def write_config(path: Path, agent: dict[str, Any], peers: dict[str, dict[str, Any]]) -> Path:
    """Write a config file with an [agent] table and [peers.NAME] tables."""
    lines = ["[agent]"] + [f"{k} = {toml_value(v)}" for k, v in agent.items()]
    for name, peer in peers.items():
        lines += ["", f"[peers.{name}]"] + [f"{k} = {toml_value(v)}" for k, v in peer.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def peer(ae_title: str, port: int = 104, allow: tuple[str, ...] = ("echo", "store"),
         host: str = "127.0.0.1") -> dict[str, Any]:
    """A [peers.X] table."""
    return {"ae_title": ae_title, "host": host, "port": port, "allow": list(allow)}


def agent_env() -> dict[str, str]:
    """Environment for child agents: our package importable, no stray config."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    for name in ("EDGE_AGENT_CONFIG", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        env.pop(name, None)
    return env


class AgentProcess:
    """``edge-agent run`` as a child process, ready once it publishes state 'serving'."""

    def __init__(self, config: Path, data_dir: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.data_dir = data_dir
        self.env = {**agent_env(), **(env or {})}
        self.log = data_dir.parent / f"agent-{data_dir.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> AgentProcess:
        """Start and wait for readiness (or fail with the agent's log)."""
        status = self.data_dir / "run" / "status.json"
        status.unlink(missing_ok=True)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "--config", str(self.config)],
                stdout=log, stderr=log, env=self.env, start_new_session=True)

        def serving() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                output = self.log.read_text()
                raise AssertionError(f"agent exited {self.proc.returncode}:\n{output}")
            try:
                data = json.loads(status.read_text())
            except (OSError, ValueError):
                return False
            return bool(data.get("state") == "serving" and data.get("pid") == self.proc.pid)

        wait_until(serving, timeout, "the agent to serve")
        return self

    def kill(self) -> None:
        """SIGKILL, as a power cut or the OOM killer would."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int:
        """SIGTERM and wait; returns the exit status."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return int(self.proc.returncode)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m agent ARGS`` and capture its output."""
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True,
                          text=True, env=env or agent_env(), timeout=timeout, cwd=cwd)


def have(tool: str) -> bool:
    """True if an executable is on PATH."""
    return shutil.which(tool) is not None
