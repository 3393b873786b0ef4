"""Test support: real DCMTK tools, agents in-process and as child processes, configs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

from bench.peers import (  # noqa: E402 (scripts/ is on the path only now)
    agent_command,
    agent_env,
    free_port,
    published_serving,
    terminate,
    wait_for,
)

__all__ = ["agent_env", "free_port"]  # re-exported: the tests import them from here

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


def wait_until(condition: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    """Poll ``condition`` until it is truthy and return it; fail after ``timeout`` seconds."""
    return wait_for(condition, timeout, what or str(condition), interval=0.02)


def toml_value(value: Any) -> str:
    """A Python value as TOML (enough for our configs)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


class FixedRouting:
    """An archive's routing that sends every instance to ``names`` (a test may change
    them as it goes) and wakes nobody: the test's senders or workers look themselves."""

    def __init__(self, *names: str) -> None:
        self.names = names

    def destinations(self, header: object, calling_ae: str) -> tuple[str, ...]:
        return self.names

    def per_study(self, header: object, calling_ae: str) -> tuple[str, ...]:
        """Nothing held: every job is due at once."""
        return ()

    def queued(self, destinations: object) -> None:
        """Nobody to wake."""


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
        (self.data_dir / "run" / "status.json").unlink(missing_ok=True)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(agent_command(self.config), stdout=log, stderr=log,
                                         env=self.env, start_new_session=True)

        def serving() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                output = self.log.read_text()
                raise AssertionError(f"agent exited {self.proc.returncode}:\n{output}")
            return published_serving(self.data_dir, self.proc.pid) is not None

        wait_until(serving, timeout, "the agent to serve")
        return self

    def kill(self) -> None:
        """SIGKILL, as a power cut or the OOM killer would."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int:
        """SIGTERM and wait; returns the exit status."""
        return 0 if self.proc is None else terminate(self.proc)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m agent ARGS`` and capture its output."""
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True,
                          text=True, env=env or agent_env(), timeout=timeout, cwd=cwd)


def have(tool: str) -> bool:
    """True if an executable is on PATH."""
    return shutil.which(tool) is not None


def storescp(directory: Path, port: int, *options: str) -> subprocess.Popen[bytes]:
    """DCMTK storescp as DEST writing to ``directory``, ready to accept (``options``:
    more of its flags, e.g. +xa for every transfer syntax it knows)."""
    directory.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen([dcmtk("storescp"), "-aet", "DEST", *options, "-od",
                                str(directory), str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    echo = [dcmtk("echoscu"), "-aec", "DEST", "127.0.0.1", str(port)]
    wait_until(lambda: subprocess.run(echo, capture_output=True).returncode == 0, 20,
               "storescp to listen")
    return process


def archive_datasets(archive: Any, datasets: Any, calling_ae: str = "CT") -> list[str]:
    """Save each data set beside the archive and ingest it (queued for the archive's
    routing, as from ``calling_ae``); their SOP Instance UIDs."""
    uids = []
    for ds in datasets:
        path = archive.layout.tmp_dir / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        archive.ingest(path, sop_class_uid=ds.SOPClassUID,
                       sop_instance_uid=ds.SOPInstanceUID, calling_ae=calling_ae)
        uids.append(str(ds.SOPInstanceUID))
    return uids
