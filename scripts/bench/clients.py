"""The clients of the benchmarks: DCMTK's storescu, movescu (into a storescp) and getscu,
any command measured with its own CPU time and peak memory, and a pynetdicom C-FIND SCU.
Every external command goes through ``peers.pinned``, so --small-box pins it too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from pydicom.dataset import Dataset
from pynetdicom import AE, build_context, evt

from agent.net.engine.transport import on_connection_open

from .peers import DCMTK, Receiver, peak_rss_mb, pinned, pinned_core, wait_for

STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"


def dcmtk_env(nagle: bool = False) -> dict[str, str]:
    """The environment for a DCMTK tool: TCP_NODELAY=1 turns its Nagle off."""
    env = dict(os.environ)
    env.pop("TCP_NODELAY", None)
    if not nagle:
        env["TCP_NODELAY"] = "1"
    return env


@dataclass
class Run:
    """What one finished command took: wall seconds, CPU seconds, peak RSS, its output."""

    seconds: float
    cpu: float
    rss_mb: float
    stdout: str


def measured(command: list[str], env: dict[str, str] | None = None, timeout: float = 1800,
             expect: str | None = None) -> Run:
    """Run a command (pinned if pinning is on) to its end; it must succeed, and print
    ``expect`` if given. CPU comes from the kernel's rusage of the child; peak RSS from
    its VmHWM, read every 10 ms while it runs: its ru_maxrss would not do, as Linux folds
    the high-water mark of the memory it leaves at exec (after vfork: this process's)
    into it."""
    with open(os.devnull, "rb") as null, _capture() as (out, err):
        started = time.perf_counter()
        proc = subprocess.Popen(pinned(command), stdin=null, stdout=out, stderr=err,
                                env=env or dict(os.environ))
        timer = threading.Timer(timeout, lambda: os.kill(proc.pid, signal.SIGKILL))
        timer.start()
        done = threading.Event()
        peak = [0.0]
        watcher = threading.Thread(target=_watch_hwm, args=(proc.pid, done, peak), daemon=True)
        watcher.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            done.set()
            watcher.join()
            timer.cancel()
            proc.returncode = os.waitstatus_to_exitcode(status)  # so Popen won't wait again
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if proc.returncode != 0 or (expect and expect not in stdout):
        raise RuntimeError(f"{' '.join(command[:3])} ... failed ({proc.returncode}):\n"
                           f"{stdout[-1500:]}\n{stderr[-1500:]}")
    return Run(seconds, usage.ru_utime + usage.ru_stime, peak[0], stdout)


def _watch_hwm(pid: int, done: threading.Event, peak: list[float]) -> None:
    """Keep the largest VmHWM of ``pid`` in ``peak[0]`` until ``done`` (or it exits)."""
    while not done.is_set():
        try:
            value = peak_rss_mb(pid)
        except OSError:
            return
        if value == value:  # a zombie has no VmHWM: nan
            peak[0] = max(peak[0], value)
        done.wait(0.01)


@contextlib.contextmanager
def _capture() -> Iterator[tuple[IO[bytes], IO[bytes]]]:
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        yield out, err


def storescu(called: str, port: int, source: Path) -> list[str]:
    """The storescu command sending a file or a directory over one association (its
    Nagle is set through the environment: ``dcmtk_env``)."""
    return [str(DCMTK / "storescu"), "-aet", "BENCH", "-aec", called, "+sd", "127.0.0.1",
            str(port), str(source)]


def send(receiver: Receiver, source: Path, nagle: bool) -> float:
    """storescu a directory (or file) into a receiver over one association; seconds until
    the last response."""
    return measured(storescu(receiver.ae_title, receiver.port, source),
                    dcmtk_env(nagle)).seconds


def send_parallel(receiver: Receiver, sources: list[Path], nagle: bool) -> float:
    """One storescu per source, all started at once; seconds until the last is done."""
    env = dcmtk_env(nagle)
    started = time.perf_counter()
    procs = [subprocess.Popen(pinned(storescu(receiver.ae_title, receiver.port, source)),
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for source in sources]
    failures = []
    try:
        for proc in procs:
            _, stderr = proc.communicate(timeout=1800)
            if proc.returncode != 0:
                failures.append(stderr.decode(errors="replace")[-500:])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if failures:
        raise RuntimeError(f"storescu into {receiver.name} failed: {failures[0]}")
    return time.perf_counter() - started


def retrieve_seconds(kind: str, server: Receiver, study_uid: str, destination: int,
                     workdir: Path, expected: int) -> float:
    """Time one movescu (into a storescp on ``destination``, AE BENCH) or getscu of a
    study from ``server``; checks that ``expected`` files arrived."""
    return retrieve_times(kind, server, study_uid, destination, workdir, expected)[0]


def retrieve_times(kind: str, server: Receiver, study_uid: str, destination: int,
                   workdir: Path, expected: int) -> tuple[float, float]:
    """``retrieve_seconds``, and the seconds until the first file was written (when the
    first instance arrived)."""
    out = workdir / f"{kind}-{server.name}-{time.monotonic_ns()}"
    out.mkdir(parents=True)
    args = ["-aet", "BENCH", "-aec", server.ae_title, "-S", "-k", "QueryRetrieveLevel=STUDY",
            "-k", f"StudyInstanceUID={study_uid}"]
    env = dcmtk_env()
    receiver = None
    if kind == "C-MOVE":
        receiver = subprocess.Popen(pinned([str(DCMTK / "storescp"), "-aet", "BENCH", "-od",
                                            str(out), str(destination)]), env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: subprocess.run([str(DCMTK / "echoscu"), "127.0.0.1", str(destination)],
                                        capture_output=True).returncode == 0, 30, "storescp")
        command = [str(DCMTK / "movescu"), *args, "-aem", "BENCH"]
    else:
        command = [str(DCMTK / "getscu"), *args, "-od", str(out)]
    started = time.time()
    try:
        seconds = measured([*command, "127.0.0.1", str(server.port)], env).seconds
    finally:
        if receiver:
            receiver.terminate()
            receiver.wait(20)
    files = list(out.iterdir())
    first = min((f.stat().st_mtime for f in files), default=started) - started
    shutil.rmtree(out)
    if len(files) != expected:
        raise RuntimeError(f"{kind} from {server.name}: {len(files)} of {expected} arrived")
    return seconds, first


def find_latencies(port: int, called: str, queries: list[Dataset]) -> tuple[list[float], int]:
    """Seconds per study-level C-FIND over one association (pynetdicom, in this process,
    on the pinned core if pinning is on), and the number of answers to the first query."""
    ae = AE(ae_title="BENCH")
    ae.requested_contexts = [build_context(STUDY_FIND)]
    core = pinned_core()
    saved = os.sched_getaffinity(0)
    if core is not None:  # the association's threads inherit this thread's affinity
        os.sched_setaffinity(0, {core})
    try:
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
    finally:
        os.sched_setaffinity(0, saved)
    return latencies, first_count
