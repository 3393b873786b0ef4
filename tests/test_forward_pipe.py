"""The pipe between the agent's process and the forwarding process: every message kind
crosses it for real (a real worker process), each side skips what it cannot read without
ending the link, and a process that says "stopped" is not taken for a hung one."""

from __future__ import annotations

import logging
import pickle
import socket
import subprocess
import sys
import threading
import types
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

import dicomgen
import pytest

from agent import config as config_module
from agent.archive import Archive
from agent.config import Config
from agent.forward import messages, worker
from agent.forward import process as forward_process
from agent.forward.messages import (
    Alive,
    ClockTrust,
    DestinationState,
    Failed,
    Forwarded,
    LogRecord,
    Reconfigure,
    Start,
    Stop,
    Stopped,
    ToAgent,
    Unreadable,
    Wake,
)
from agent.status import StatusModel
from tests.support import FixedRouting, free_port, wait_until
from tests.test_forward import ScriptedSCP, forward_config


def fill(archive: Archive, count: int) -> list[str]:
    """Ingest ``count`` instances (the archive's routing queues their jobs)."""
    uids = []
    for ds in dicomgen.series(count, size=8):
        path = archive.layout.tmp_dir / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        archive.ingest(path, sop_class_uid=ds.SOPClassUID,
                       sop_instance_uid=ds.SOPInstanceUID, calling_ae="CT")
        uids.append(str(ds.SOPInstanceUID))
    return uids


class AgentEnd:
    """The test as the agent's process: a real worker on the other end of a socketpair,
    and what it says, decoded, in order."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        with theirs:
            self.process = subprocess.Popen(
                [sys.executable, "-m", worker.__name__, str(theirs.fileno())],
                pass_fds=[theirs.fileno()], env=forward_process._child_environment())
        self.conn = Connection(ours.detach())
        self.heard: list[ToAgent | Unreadable] = []
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                frame = self.conn.recv_bytes()
            except (EOFError, OSError):
                return
            with self.lock:
                self.heard.append(messages.decode_to_agent(frame))

    def send(self, message: messages.ToWorker) -> None:
        self.conn.send_bytes(messages.encode(message))

    def said(self, wanted: ToAgent) -> bool:
        with self.lock:
            return wanted in self.heard

    def found(self, test: Callable[[ToAgent | Unreadable], bool]) -> bool:
        with self.lock:
            return any(test(m) for m in self.heard)

    def logged(self, text: str) -> bool:
        return self.found(lambda m: isinstance(m, LogRecord) and text in m.fields["msg"])

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.conn.close()
        self.reader.join(5)


def configs(tmp_path: Path, port: int) -> tuple[Config, Config]:
    """Forwarding to PACS and DEAD (nobody listens), with LATE a peer but no destination;
    and the same after a reload that dropped DEAD."""
    dead = free_port()
    first = forward_config(tmp_path, {"PACS": ("SCRIPTED", port), "DEAD": ("DEAD", dead),
                                      "LATE": ("LATE", port)}, ["PACS", "DEAD"])
    (tmp_path / "reloaded").mkdir()
    second = forward_config(tmp_path / "reloaded", {"PACS": ("SCRIPTED", port),
                                                    "LATE": ("LATE", port)}, ["PACS"])
    return config_module.load_file(first), config_module.load_file(second)


def test_every_message_kind_crosses_the_pipe_to_a_real_worker(tmp_path: Path) -> None:
    pacs = ScriptedSCP([0xA700])  # the first store refused for now: one "failed"
    config, reloaded = configs(tmp_path, pacs.port)
    routing = FixedRouting("PACS", "DEAD", "LATE")
    archive = Archive(tmp_path / "data", routing=routing)
    end = AgentEnd()
    try:
        first = fill(archive, 2)
        end.send(Start(config, archive.layout.root, logging.INFO))
        # no depth from the agent: the worker finds LATE's jobs itself and beats unasked
        wait_until(lambda: end.said(Alive(("DEAD", "LATE", "PACS"))), 30, "LATE adopted")
        wait_until(
            lambda: end.found(
                lambda m: isinstance(m, Forwarded) and m.destination == "LATE"
                and m.seconds is not None and m.seconds >= 0
            ),
            30,
            "a delivery to LATE, with the time its C-STORE took",
        )
        wait_until(lambda: end.found(lambda m: isinstance(m, Failed)), 30, "the refused store")
        wait_until(lambda: end.found(lambda m: isinstance(m, DestinationState)
                                     and m.name == "DEAD" and m.down_since is not None),
                   30, "DEAD down")
        wait_until(lambda: end.logged("forwarding to LATE"), 10, "the worker's log line")
        # what it cannot read is skipped, said, and the link goes on
        end.conn.send_bytes(b"\x80\x05 no pickle")
        end.conn.send_bytes(pickle.dumps(("tick", {})))  # the untyped kind of before
        routing.names = ("PACS",)
        later = fill(archive, 1)
        end.send(Wake(("PACS",)))
        wait_until(lambda: end.logged("ignored not a message (UnpicklingError)"), 10, "garbage")
        wait_until(lambda: end.logged("ignored an unknown message (tuple)"), 10, "old kind")
        wait_until(lambda: pacs.received.count(later[0]) == 1, 30, "the woken job delivered")
        end.send(Reconfigure(reloaded))
        wait_until(lambda: end.said(DestinationState("DEAD", None, None, None)), 30,
                   "DEAD no longer down once it left the configuration")
        wait_until(lambda: end.said(Alive(("LATE", "PACS"))), 30, "the senders after reload")
        end.send(ClockTrust(False))
        wait_until(lambda: end.logged("send windows are ignored"), 10, "the clock's trust")
        end.send(Stop())
        wait_until(lambda: end.said(Stopped()), 30, "stopped")
        assert end.process.wait(30) == 0
        assert set(first) <= set(pacs.received)
    finally:
        end.close()
        archive.close()
        pacs.close()


def test_an_unreadable_message_does_not_end_the_agents_side_of_the_link(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(forward_process, "worker",
                        types.SimpleNamespace(__name__="tests.scripted_worker"))
    config, _ = configs(tmp_path, free_port())
    status = StatusModel()
    with Archive(tmp_path / "data") as archive:
        supervisor = forward_process.ForwardingProcess(lambda: config, status)
        supervisor.start(archive)
        try:
            child = supervisor._child
            assert child is not None
            # after the garbage, the same link still carries what follows it
            wait_until(lambda: status.snapshot().forwarded == 1, 30, "the forwarded after it")
            assert status.snapshot().forwarder_pid == child.process.pid
            assert child._reader.is_alive()
            warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
            assert "ignored not a message (UnpicklingError) from the forwarding process" \
                in warnings
            assert "ignored an unknown message (tuple) from the forwarding process" in warnings
        finally:
            supervisor.close()
        assert child.stopped_at is not None and child.process.returncode == 0


def test_a_process_that_says_it_stopped_is_not_taken_for_a_hung_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=forward_process.__name__)
    pacs = ScriptedSCP([])
    config, _ = configs(tmp_path, pacs.port)
    status = StatusModel()
    try:
        with Archive(tmp_path / "data") as archive:
            supervisor = forward_process.ForwardingProcess(lambda: config, status)
            supervisor.start(archive)
            try:
                child = supervisor._child
                assert child is not None
                # it beats without being asked: nobody calls refresh_status here
                wait_until(lambda: status.snapshot().forwarder_pid == child.process.pid, 30,
                           "the worker's own heartbeat")
                child.post(Stop())  # a stop the supervisor did not ask for
                wait_until(lambda: child.stopped_at is not None, 30, "it says it stopped")
                assert child.process.wait(30) == 0
                monkeypatch.setattr(forward_process, "STUCK_AFTER", 0.0)
                monkeypatch.setattr(forward_process, "RESPAWN_GAP", 0.0)
                supervisor.refresh_status()
                assert not [p for p in status.snapshot().problems if p.part == "forwarding"]
                assert supervisor.trouble() is None
                assert supervisor._child is not None and supervisor._child is not child
                assert any(r.levelno == logging.DEBUG and "stopped" in r.getMessage()
                           and r.name == forward_process.__name__ for r in caplog.records)
                assert not any(r.levelno >= logging.ERROR for r in caplog.records
                               if r.name == forward_process.__name__)
            finally:
                supervisor.close()
    finally:
        pacs.close()
