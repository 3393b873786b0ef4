"""The archive's promise: what was acknowledged survives; nothing half-written shows."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dicomgen
import pytest
from pydicom import dcmread
from pynetdicom import AE

from agent import config as config_module
from agent.app import Agent
from agent.archive.index import connect
from tests import scu
from tests.support import AgentProcess, free_port, peer, run_cli, wait_until, write_config
from tests.test_storage import archived_files, assert_identical, indexed_uids


def port_of(config_file: Path) -> int:
    """The port a config file sets."""
    return config_module.load_file(config_file).agent.port


@pytest.mark.slow
def test_kill_9_mid_transfer_loses_no_acknowledged_instance(
        agent_process: AgentProcess, config_file: Path, tmp_path: Path, data_dir: Path) -> None:
    sent = dicomgen.write_series(tmp_path / "k", 200, size=128)
    acknowledged: list[Path] = []

    def kill_after_sixty(path: Path, status: int) -> None:
        if status == 0:
            acknowledged.append(path)
        if len(acknowledged) == 60:
            agent_process.kill()

    agent_process.start()
    scu.store(port_of(config_file), sent, after_each=kill_after_sixty)
    assert len(acknowledged) == 60
    agent_process.start()  # restart: recovery runs before it serves again
    assert {p.name for p in (data_dir / "tmp").iterdir()} == set()
    stored = indexed_uids(data_dir)
    assert len(stored) >= 60
    assert_identical(acknowledged, data_dir)
    assert len(archived_files(data_dir)) == len(stored)


def test_restart_indexes_orphans_drops_rows_without_files_and_cleans_temp(
        config_file: Path, tmp_path: Path, data_dir: Path) -> None:
    sent = dicomgen.write_series(tmp_path / "r", 3)
    config = config_module.load_file(config_file)
    with Agent(config) as agent:
        assert scu.store(config.agent.port, sent) == [0, 0, 0]
        assert agent.archive is not None
    archived_files(data_dir)[0].unlink()  # an indexed file that vanished
    [extra] = dicomgen.write_series(tmp_path / "o", 1)
    header = dcmread(extra, stop_before_pixels=True)
    orphan = (data_dir / "archive" / header.StudyInstanceUID / header.SeriesInstanceUID
              / f"{header.SOPInstanceUID}.dcm")  # placed, but its index row never landed
    orphan.parent.mkdir(parents=True)
    shutil.copy(extra, orphan)
    (data_dir / "tmp" / "tmpleftover.dcm").write_bytes(b"half a data set")
    with Agent(config) as agent:
        assert agent.archive is not None
        assert agent.archive.counts().instances == 3  # 3 - 1 vanished + 1 orphan
    assert str(header.SOPInstanceUID) in indexed_uids(data_dir)
    assert not list((data_dir / "tmp").iterdir())


def test_reindex_rebuilds_the_index_from_the_files_alone(
        config_file: Path, tmp_path: Path, data_dir: Path) -> None:
    sent = dicomgen.write_series(tmp_path / "x", 5)
    config = config_module.load_file(config_file)
    with Agent(config):
        assert scu.store(config.agent.port, sent) == [0] * 5
    before = indexed_uids(data_dir)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{data_dir / 'index.sqlite'}{suffix}").unlink(missing_ok=True)
    result = run_cli("reindex", "--config", str(config_file))
    assert result.returncode == 0, result.stderr
    assert "5 instances" in result.stdout
    assert indexed_uids(data_dir) == before


def test_the_file_meta_names_the_sender_and_restores_its_routes(
        tmp_path: Path, data_dir: Path) -> None:
    config_file = write_config(
        tmp_path / "routed.toml",
        {"ae_title": "EDGE", "port": free_port(), "bind": "127.0.0.1",
         "data_dir": str(data_dir), "min_free_mb": 0},
        {"CT": peer("MODALITY"), "PACS": peer("PACS", free_port()),
         "RESEARCH": peer("RESEARCH", free_port())},
    )
    config_file.write_text(config_file.read_text() + (
        '[forward]\nto = ["PACS", "CT"]\n'  # never back to the sender: not to CT
        '[[forward.rules]]\nto = ["RESEARCH"]\nmatch = { calling_ae = "MODALITY" }\n'))
    sent = dicomgen.write_series(tmp_path / "m", 3)
    uids = {str(dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in sent}
    config = config_module.load_file(config_file)
    expected = {(uid, d) for uid in uids for d in ("PACS", "RESEARCH")}
    with Agent(config):
        assert scu.store(config.agent.port, sent, calling_ae="MODALITY") == [0, 0, 0]
    assert_identical(sent, data_dir)  # the data set's bytes as sent; the meta names who
    assert {dcmread(path, stop_before_pixels=True).file_meta.SourceApplicationEntityTitle
            for path in archived_files(data_dir)} == {"MODALITY"}
    assert senders_and_routes(data_dir) == ({"MODALITY"}, expected)
    start_after_losing_the_index(config_file, data_dir)
    assert senders_and_routes(data_dir) == ({"MODALITY"}, expected)
    reindex(config_file, data_dir)  # it queues nothing: the forward queue outlives a reindex
    assert senders_and_routes(data_dir)[0] == {"MODALITY"}


def senders_and_routes(data_dir: Path) -> tuple[set[str], set[tuple[str, str]]]:
    """The calling AEs the index holds, and its forward jobs (instance, destination)."""
    conn = connect(data_dir / "index.sqlite", readonly=True)
    try:
        senders = {row[0] for row in conn.execute("SELECT calling_ae FROM instances")}
        routes = set(conn.execute("SELECT SOPInstanceUID, destination FROM forward_jobs"))
        return senders, routes
    finally:
        conn.close()


def lose_the_index(data_dir: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{data_dir / 'index.sqlite'}{suffix}").unlink(missing_ok=True)


def start_after_losing_the_index(config_file: Path, data_dir: Path) -> None:
    """What a power cut before any synced commit leaves: files, and no index rows."""
    lose_the_index(data_dir)
    with Agent(config_module.load_file(config_file)) as agent:
        assert agent.archive is not None


def reindex(config_file: Path, data_dir: Path) -> None:
    lose_the_index(data_dir)
    result = run_cli("reindex", "--config", str(config_file))
    assert result.returncode == 0, result.stderr


# -- a real full disk: a small tmpfs as the data directory --------------------------------


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs (needs root and mount rights; skipped elsewhere)."""
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mountpoint)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


@pytest.mark.slow
def test_a_really_full_disk_never_acknowledges_what_it_could_not_keep(
        small_filesystem: Path, tmp_path: Path) -> None:
    data_dir = small_filesystem / "data"
    config_file = write_config(
        tmp_path / "small.toml",
        {"ae_title": "EDGE", "port": free_port(), "bind": "127.0.0.1",
         "data_dir": str(data_dir), "min_free_mb": 0},
        {"CT": peer("MODALITY")},
    )
    sent = dicomgen.write_series(tmp_path / "fill", 40, size=256)  # 40 x 128 KiB > 4 MiB
    statuses: dict[Path, int] = {}
    config = config_module.load_file(config_file)
    with Agent(config) as agent:
        for path in sent:
            try:
                statuses[path] = scu.store(config.agent.port, [path])[0]
            except ConnectionError:
                statuses[path] = -1
        acknowledged = [p for p, s in statuses.items() if s == 0]
        refused = [p for p, s in statuses.items() if s != 0]
        assert acknowledged and refused
        assert all(s == 0xA700 for s in statuses.values() if s != 0)  # answered, never dropped
        wait_until(lambda: not list((data_dir / "tmp").iterdir()), 30, "temp files cleaned")
        assert_identical(acknowledged, data_dir)
        assert len(archived_files(data_dir)) == len(acknowledged)
        echo = subprocess.run(
            [sys.executable, "-c", "import sys; from pynetdicom import AE; ae = AE('MODALITY');"
             "ae.add_requested_context('1.2.840.10008.1.1');"
             f"a = ae.associate('127.0.0.1', {config.agent.port}, ae_title='EDGE');"
             "s = a.send_c_echo(); a.release(); sys.exit(0 if s.Status == 0 else 1)"],
            timeout=60)
        assert echo.returncode == 0, "the agent must keep serving on a full disk"
        assert agent.status.snapshot().refused >= 1


def _fill(path: Path, leave: int) -> None:
    """Write a ballast file that leaves about ``leave`` bytes free on its filesystem."""
    stats = os.statvfs(path.parent)
    size = stats.f_bavail * stats.f_frsize - leave
    with path.open("wb") as handle:
        while size > 0:
            size -= handle.write(b"\0" * min(size, 1 << 20))


@pytest.mark.slow
def test_a_disk_that_fills_mid_transfer_answers_a700_and_the_association_serves_on(
        small_filesystem: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data_dir = small_filesystem / "data"
    config_file = write_config(
        tmp_path / "small.toml",
        {"ae_title": "EDGE", "port": free_port(), "bind": "127.0.0.1",
         "data_dir": str(data_dir), "min_free_mb": 0},  # no floor: the write itself fails
        {"CT": peer("MODALITY")},
    )
    first, second = dicomgen.write_series(tmp_path / "big", 2, size=512)  # 512 KiB each
    config = config_module.load_file(config_file)
    caplog.set_level(logging.WARNING)
    with Agent(config):
        ballast = small_filesystem / "ballast"
        _fill(ballast, leave=128 * 1024)
        ae = AE(ae_title="MODALITY")
        for path in (first, second):
            meta = dcmread(path, stop_before_pixels=True).file_meta
            ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", config.agent.port, ae_title="EDGE")
        assert assoc.is_established
        try:
            refused = [assoc.send_c_store(path) for path in (first, second)]
            assert [r.Status for r in refused] == [0xA700, 0xA700]
            assert {r.ErrorComment for r in refused} == {
                "cannot write the received data set: No space left on device"}
            assert not list((data_dir / "tmp").iterdir())  # the partial files went at once
            ballast.unlink()  # space is back: the same association stores the same instance
            assert assoc.is_established
            assert assoc.send_c_store(first).Status == 0x0000
        finally:
            assoc.release()
        assert_identical([first], data_dir)
        assert len(archived_files(data_dir)) == 1
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    trouble = [m for m in messages if m.startswith("local trouble")]
    assert trouble == ["local trouble, C-STORE answered 0xA700: cannot write the received"
                       " data set: No space left on device"]  # once, the second counted
    assert any(m.startswith("1 more log lines like 'local trouble") and "from this box" in m
               for m in messages)
    assert not any("dropped the connection" in m for m in messages)
