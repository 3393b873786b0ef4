"""One way to live configuration: the archive's routing and every sender read the
configuration in force, so a reload reaches them all and no construction order matters."""

from __future__ import annotations

import time
from pathlib import Path

import dicomgen

from agent import config as config_module
from agent.archive import Archive
from agent.archive.index import connect
from agent.archive.recovery import recover
from agent.config import Config
from agent.forward.forwarder import Forwarder
from agent.forward.rules import ConfiguredRouting
from agent.reconfigure import LiveConfig
from tests.support import free_port, peer, wait_until, write_config
from tests.test_durability import lose_the_index
from tests.test_forward_backoff import ManualClock, Recorder, RefusingSCP


def routed_config(root: Path, to: list[str], rule_to: str | None, ports: dict[str, int],
                  associations: int = 2) -> Config:
    """MODALITY sends; forwarding to ``to``, plus ``rule_to`` for what MODALITY sends."""
    root.mkdir(parents=True, exist_ok=True)
    peers = {"CT": peer("MODALITY", allow=("store",))}
    peers.update({name: peer(f"AE-{name}", port, allow=("echo",)) for name, port in ports.items()})
    path = write_config(root / "agent.toml",
                        {"port": free_port(), "bind": "127.0.0.1",
                         "data_dir": str(root / "data"), "min_free_mb": 0}, peers)
    text = f"\n[forward]\nto = {to!r}\nassociations = {associations}\n".replace("'", '"')
    if rule_to is not None:
        text += f'[[forward.rules]]\nto = ["{rule_to}"]\nmatch = {{ calling_ae = "MODALITY" }}\n'
    path.write_text(path.read_text() + text)
    return config_module.load_file(path)


def sent_by(archive: Archive, sender: str, count: int) -> list[str]:
    """Ingest ``count`` instances whose file meta names ``sender`` (as received ones do)."""
    uids = []
    for ds in dicomgen.series(count, size=8):
        path = archive.layout.tmp_dir / f"{ds.SOPInstanceUID}.dcm"
        ds.file_meta.SourceApplicationEntityTitle = sender
        ds.save_as(path, enforce_file_format=True)
        archive.ingest(path, sop_class_uid=ds.SOPClassUID,
                       sop_instance_uid=ds.SOPInstanceUID, calling_ae=sender)
        uids.append(str(ds.SOPInstanceUID))
    return uids


def routes(data_dir: Path) -> set[tuple[str, str]]:
    conn = connect(data_dir / "index.sqlite", readonly=True)
    try:
        return set(conn.execute("SELECT SOPInstanceUID, destination FROM forward_jobs"))
    finally:
        conn.close()


def test_recovered_files_are_routed_by_the_archives_own_routing_and_a_reload_swaps_its_rules(
        tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("PACS", "RESEARCH", "OTHER")}
    first = routed_config(tmp_path / "first", ["PACS", "CT"], "RESEARCH", ports)
    second = routed_config(tmp_path / "second", ["OTHER"], None, ports)
    data_dir = tmp_path / "data"
    with Archive(data_dir) as unrouted:  # a power cut's leftovers: files, then no index
        kept = sent_by(unrouted, "MODALITY", 3)
    lose_the_index(data_dir)
    live = LiveConfig(first)
    # the archive comes first, recovery at once: nothing else of the agent exists yet
    with Archive(data_dir, routing=ConfiguredRouting(live.current)) as archive:
        assert recover(archive).files_indexed == 3
        # forward.to and the rule; never back to CT, the sender
        assert routes(data_dir) == {(uid, d) for uid in kept for d in ("PACS", "RESEARCH")}
        live.replace(second)  # a reload: the same archive, the new rules
        late = sent_by(archive, "MODALITY", 1)
    assert routes(data_dir) - {(uid, d) for uid in kept for d in ("PACS", "RESEARCH")} \
        == {(late[0], "OTHER")}


def test_a_reload_reaches_every_sender_of_every_destination(tmp_path: Path) -> None:
    """Three lanes to each of two destinations, all at an address nobody serves; the reload
    points both at a live SCP. A lane that kept its old peer would keep its share of
    the jobs: every instance arriving at both shows that the reload reached them all."""
    right = RefusingSCP({})  # accepts everything
    dead = {"PACS": free_port(), "RESEARCH": free_port()}
    wrong = routed_config(tmp_path / "wrong", ["PACS", "RESEARCH"], None, dead, associations=3)
    fixed = routed_config(tmp_path / "fixed", ["PACS", "RESEARCH"], None,
                          {"PACS": right.port, "RESEARCH": right.port}, associations=3)
    live = LiveConfig(wrong)
    archive = Archive(tmp_path / "data", routing=ConfiguredRouting(live.current))
    uids = sent_by(archive, "MODALITY", 12)
    clock, events = ManualClock(time.time() + 1), Recorder()
    forwarder = Forwarder(wrong, archive, events, clock)
    try:
        forwarder.start()
        wait_until(lambda: len(events.probes()) >= 2, 30, "both destinations reported down")
        assert right.received == []
        forwarder.reconfigure(fixed)  # the clock stands still: only the reload can do it
        wait_until(lambda: sorted(right.received) == sorted(uids * 2), 60,
                   "every instance at both destinations")
        lanes = [sender for lanes in forwarder.senders.values() for sender in lanes]
        assert len(lanes) == 6
        assert {sender.peer.port for sender in lanes} == {right.port}
    finally:
        forwarder.close()
        right.close()
        archive.close()
