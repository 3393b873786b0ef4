"""Store-and-forward against a real PACS (Orthanc) and a scripted pynetdicom SCP."""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path
from typing import Any

import dicomgen
import pytest
from bench.peers import Orthanc
from pydicom import dcmread
from pynetdicom import AE, AllStoragePresentationContexts, evt

from agent import config as config_module
from agent.app import Agent
from agent.archive.index import connect
from tests import scu
from tests.support import AgentProcess, free_port, peer, wait_until, write_config

FAST_RETRY = {"retry_first": 0.2, "retry_max": 0.5, "permanent_tries": 2}


def forward_config(root: Path, destinations: dict[str, tuple[str, int]],
                   to: list[str]) -> Path:
    """An agent config forwarding to ``to``, with quick retries."""
    peers = {"CT": peer("MODALITY", allow=("store",))}
    for name, (ae_title, port) in destinations.items():
        peers[name] = peer(ae_title, port, allow=("echo",))
    path = write_config(root / "agent.toml",
                        {"port": free_port(), "bind": "127.0.0.1",
                         "data_dir": str(root / "data"), "min_free_mb": 0}, peers)
    lines = ["", "[forward]", f"to = {to!r}".replace("'", '"')]
    lines += [f"{key} = {value}" for key, value in FAST_RETRY.items()]
    path.write_text(path.read_text() + "\n".join(lines) + "\n")
    return path


def jobs(data_dir: Path) -> dict[str, str]:
    """State of every forward job: 'SOPInstanceUID destination' -> state."""
    conn = connect(data_dir / "index.sqlite", readonly=True)
    try:
        rows = conn.execute("SELECT SOPInstanceUID, destination, state FROM forward_jobs")
        return {f"{uid} {dest}": state for uid, dest, state in rows}
    finally:
        conn.close()


def published_down(data_dir: Path, *names: str) -> bool:
    """The running agent's published status shows these destinations down (unreachable:
    their jobs wait for the destination's probe, untouched)."""
    try:
        published = json.loads((data_dir / "run" / "status.json").read_text())
    except (OSError, ValueError):
        return False
    down = {d["name"] for d in published.get("destinations", []) if d.get("state") == "down"}
    return set(names) <= down


def orthanc_uids(orthanc: Orthanc) -> set[str]:
    """SOP Instance UIDs Orthanc holds."""
    query = {"Level": "Instance", "Query": {}, "Expand": True}
    found = orthanc.rest("/tools/find", json.dumps(query).encode())
    return {item["MainDicomTags"]["SOPInstanceUID"] for item in found}


def test_a_200_instance_study_reaches_orthanc_byte_for_byte(orthanc: Orthanc,
                                                            tmp_path: Path) -> None:
    config = config_module.load_file(forward_config(
        tmp_path, {"PACS": ("ORTHANC", orthanc.port)}, ["PACS"]))
    sent = dicomgen.write_series(tmp_path / "study", 200, size=64)
    with Agent(config) as agent:
        assert scu.store(config.agent.port, sent) == [0] * 200
        wait_until(lambda: orthanc.count() == 200, 60, "Orthanc to hold 200 instances")
        wait_until(lambda: set(jobs(tmp_path / "data").values()) == {"done"}, 30, "jobs done")
        assert agent.status.snapshot().destinations[0].last_success is not None
    for path in sent[:: 40]:
        uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        query = {"Level": "Instance", "Query": {"SOPInstanceUID": uid}}
        [found] = orthanc.rest("/tools/find", json.dumps(query).encode())
        stored = tmp_path / "from-orthanc.dcm"
        stored.write_bytes(orthanc_file(orthanc, found))
        assert dicomgen.dataset_bytes(stored) == dicomgen.dataset_bytes(path)


def orthanc_file(orthanc: Orthanc, instance_id: str) -> bytes:
    """The DICOM file Orthanc stored."""
    import urllib.request

    url = f"http://127.0.0.1:{orthanc.http_port}/instances/{instance_id}/file"
    with urllib.request.urlopen(url, timeout=30) as answer:
        return bytes(answer.read())


def test_one_dead_destination_never_holds_back_the_live_one(orthanc: Orthanc,
                                                            tmp_path: Path) -> None:
    config = config_module.load_file(forward_config(
        tmp_path, {"PACS": ("ORTHANC", orthanc.port), "DEAD": ("DEAD", free_port())},
        ["PACS", "DEAD"]))
    sent = dicomgen.write_series(tmp_path / "study", 60, size=32)
    with Agent(config):
        assert scu.store(config.agent.port, sent) == [0] * 60
        wait_until(lambda: orthanc.count() == 60, 60, "the live destination")
        states = jobs(tmp_path / "data")
    assert {s for k, s in states.items() if k.endswith(" DEAD")} <= {"pending", "retrying"}
    assert {s for k, s in states.items() if k.endswith(" PACS")} == {"done"}


@pytest.mark.slow
def test_sigkill_mid_forward_then_restart_delivers_everything(orthanc: Orthanc,
                                                              tmp_path: Path) -> None:
    config_file = forward_config(tmp_path, {"PACS": ("ORTHANC", orthanc.port)}, ["PACS"])
    process = AgentProcess(config_file, tmp_path / "data")
    sent = dicomgen.write_series(tmp_path / "study", 150, size=64)
    port = config_module.load_file(config_file).agent.port
    try:
        process.start()
        scu.store(port, sent, after_each=lambda _path, _status: (
            process.kill() if orthanc.count() >= 30 else None))
        process.kill()
        acknowledged = set(jobs(tmp_path / "data"))
        process.start()
        wait_until(lambda: len(orthanc_uids(orthanc)) >= len(acknowledged), 90,
                   "every acknowledged instance at the PACS")
    finally:
        process.stop()
    assert {key.split()[0] for key in acknowledged} <= orthanc_uids(orthanc)


class ScriptedSCP:
    """A pynetdicom Storage SCP answering each C-STORE from a script of statuses."""

    def __init__(self, script: list[int | str]) -> None:
        self.script = list(script)
        self.received: list[str] = []
        self.associations: list[int] = []  # which association carried each received one
        self.lock = threading.Lock()
        self.port = free_port()
        ae = AE(ae_title="SCRIPTED")
        ae.supported_contexts = AllStoragePresentationContexts
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self.on_store)])

    def on_store(self, event: Any) -> int:
        with self.lock:
            step = self.script.pop(0) if self.script else 0x0000
            self.received.append(str(event.request.AffectedSOPInstanceUID))
            self.associations.append(id(event.assoc))
        if step == "abort":
            event.assoc.abort()
            return 0x0000
        return int(step)

    def close(self) -> None:
        self.server.shutdown()


@pytest.mark.parametrize(("script", "final_state", "tries"), [
    ([0xA700, 0xA700], "done", 3),  # out of resources: transient, retried until done
    ([0xA900, 0xA900], "quarantined", 2),  # does not match SOP class: permanent
    ([0xC000, 0xC000], "quarantined", 2),  # cannot understand: permanent
    ([0xB000], "done", 1),  # warning: delivered
    (["abort"], "done", 2),  # aborted mid-way: the outcome is unknown, resent
])
def test_scripted_refusals_follow_the_policy(tmp_path: Path, script: list[int | str],
                                             final_state: str, tries: int) -> None:
    scp = ScriptedSCP(script)
    try:
        config = config_module.load_file(forward_config(
            tmp_path, {"SCRIPTED": ("SCRIPTED", scp.port)}, ["SCRIPTED"]))
        [sent] = dicomgen.write_series(tmp_path / "one", 1, size=8)
        with Agent(config):
            assert scu.store(config.agent.port, [sent]) == [0]
            wait_until(lambda: set(jobs(tmp_path / "data").values()) == {final_state}, 30,
                       f"the job to end {final_state}")
            assert len(scp.received) == tries
    finally:
        scp.close()


def test_quarantine_is_listed_and_queue_retry_delivers_it(tmp_path: Path) -> None:
    from tests.support import run_cli

    scp = ScriptedSCP([0xA900, 0xA900])  # refused twice, then accepted
    try:
        config_file = forward_config(tmp_path, {"SCRIPTED": ("SCRIPTED", scp.port)},
                                     ["SCRIPTED"])
        config = config_module.load_file(config_file)
        [sent] = dicomgen.write_series(tmp_path / "one", 1, size=8)
        with Agent(config):
            assert scu.store(config.agent.port, [sent]) == [0]
            wait_until(lambda: set(jobs(tmp_path / "data").values()) == {"quarantined"}, 30,
                       "quarantine")
            listing = run_cli("queue", "--config", str(config_file))
            assert "SCRIPTED: 0 pending, 0 retrying, 1 quarantined" in listing.stdout
            assert "0xA900" in listing.stdout
            refused = run_cli("queue", "purge", "--config", str(config_file))
            assert refused.returncode == 1 and "--yes" in refused.stderr
            retried = run_cli("queue", "retry", "--all", "--config", str(config_file))
            assert retried.stdout.startswith("OK re-armed 1 jobs")
            wait_until(lambda: set(jobs(tmp_path / "data").values()) == {"done"}, 30,
                       "delivery after retry")
        assert len(scp.received) == 3
        assert "everything was delivered" in run_cli(
            "queue", "--config", str(config_file)).stdout
    finally:
        scp.close()


def archived(data_dir: Path) -> set[str]:
    """SOP Instance UIDs of the files in the archive."""
    return {p.stem for p in (data_dir / "archive").rglob("*.dcm")}


def test_retention_removes_only_what_every_destination_has(
        orthanc: Orthanc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.forward import retention

    config = config_module.load_file(forward_config(
        tmp_path, {"PACS": ("ORTHANC", orthanc.port), "DEAD": ("DEAD", free_port())},
        ["PACS"]))
    data_dir = tmp_path / "data"
    both = dicomgen.write_series(tmp_path / "both", 3, size=8)
    pacs_only = dicomgen.write_series(tmp_path / "pacs", 3, size=8)
    with Agent(config) as agent:
        assert agent.archive is not None
        assert scu.store(config.agent.port, pacs_only + both) == [0] * 6
        wait_until(lambda: orthanc.count() == 6, 60, "delivery")
        wait_until(lambda: set(jobs(data_dir).values()) == {"done"}, 30, "jobs done")
        undelivered = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in both}
        with agent.archive.index.transaction() as conn:  # as if DEAD was also a destination
            conn.executemany("INSERT INTO forward_jobs (SOPInstanceUID, destination, state,"
                             " next_attempt, created_at) VALUES (?, 'DEAD', 'retrying', 0, 0)",
                             [(uid,) for uid in undelivered])
        kept_days = retention.sweep(agent.archive, config.forward)
        assert kept_days == 0  # delivered today: still within keep_days
        agent.reload(dataclasses.replace(  # free space under the floor, by a reload
            config, agent=dataclasses.replace(config.agent, min_free_mb=1 << 42)))
        monkeypatch.setattr(retention, "BATCH", 2)
        # out of time after the first batch: a sweep never starves the watchdog's loop
        assert retention.sweep(agent.archive, config.forward, budget=0.0) == 2
        assert retention.sweep(agent.archive, config.forward) == 1
        assert archived(data_dir) == undelivered
        assert agent.archive.counts().instances == 3
