"""The Storage SCP with real senders: DCMTK storescu and pynetdicom."""

from __future__ import annotations

import logging
import socket
import subprocess
from pathlib import Path

import dicomgen
import pytest
from pydicom import dcmread, uid

from agent.app import Agent
from agent.archive.index import connect
from tests import scu
from tests.support import dcmtk, wait_until


def archived_files(data_dir: Path) -> list[Path]:
    """Every instance file in the archive."""
    return sorted((data_dir / "archive").rglob("*.dcm"))


def indexed_uids(data_dir: Path) -> set[str]:
    """SOP Instance UIDs in the index, read as another process would."""
    conn = connect(data_dir / "index.sqlite", readonly=True)
    try:
        return {row[0] for row in conn.execute("SELECT SOPInstanceUID FROM instances")}
    finally:
        conn.close()


def by_uid(paths: list[Path]) -> dict[str, Path]:
    """Files keyed by their SOP Instance UID."""
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in paths}


def assert_identical(sent: list[Path], data_dir: Path) -> None:
    """Every sent file is archived once, with a byte-identical data set and syntax."""
    stored = by_uid(archived_files(data_dir))
    for path in sent:
        source = dcmread(path, stop_before_pixels=True)
        target = stored[str(source.SOPInstanceUID)]
        assert dicomgen.dataset_bytes(target) == dicomgen.dataset_bytes(path)
        stored_syntax = dcmread(target, stop_before_pixels=True).file_meta.TransferSyntaxUID
        assert stored_syntax == source.file_meta.TransferSyntaxUID


def storescu(port: int, *paths: Path, ae: str = "MODALITY", extra: tuple[str, ...] = ()
             ) -> subprocess.CompletedProcess[str]:
    """DCMTK storescu over one association."""
    command = [dcmtk("storescu"), "-aet", ae, "-aec", "EDGE", *extra, "+sd", "127.0.0.1",
               str(port), *map(str, paths)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_a_200_instance_series_arrives_whole_and_byte_identical(agent: Agent, tmp_path: Path,
                                                                data_dir: Path) -> None:
    sent = dicomgen.write_series(tmp_path / "ct", 200, modality="CT", size=64)
    result = storescu(agent.server.port, tmp_path / "ct")  # type: ignore[union-attr]
    assert result.returncode == 0, result.stderr
    assert len(archived_files(data_dir)) == 200
    assert indexed_uids(data_dir) == set(by_uid(sent))
    assert_identical(sent, data_dir)
    counts = agent.archive.counts()  # type: ignore[union-attr]
    assert (counts.patients, counts.studies, counts.series, counts.instances) == (1, 1, 1, 200)
    assert agent.status.snapshot().received == 200
    assert not list((data_dir / "tmp").iterdir())


def test_compressed_and_multiframe_objects_are_stored_as_they_arrive(
        agent: Agent, tmp_path: Path, data_dir: Path) -> None:
    sent = dicomgen.compressed_samples(tmp_path / "compressed")
    sent.append(dicomgen.multiframe(tmp_path / "multiframe.dcm", frames=12))
    syntaxes = {str(dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID)
                for p in sent}
    assert {uid.JPEG2000, uid.RLELossless, uid.JPEGLSLossless, uid.JPEGBaseline8Bit} <= syntaxes
    statuses = scu.store(agent.server.port, sent)  # type: ignore[union-attr]
    assert statuses == [0] * len(sent)
    assert_identical(sent, data_dir)


def test_storescu_proposing_jpeg2000_keeps_the_compressed_encoding(
        agent: Agent, tmp_path: Path, data_dir: Path) -> None:
    sample = [p for p in dicomgen.compressed_samples(tmp_path / "c")
              if p.name == "MR_small_jp2klossless.dcm"]
    result = storescu(agent.server.port, *sample, extra=("-xv", "-R"))  # type: ignore[union-attr]
    assert result.returncode == 0, result.stderr
    # storescu itself rewrites the encapsulated Pixel Data's VR (OW -> OB), so compare the
    # encoding and the compressed pixel data rather than every byte.
    [stored] = archived_files(data_dir)
    received, original = dcmread(stored), dcmread(sample[0])
    assert received.file_meta.TransferSyntaxUID == uid.JPEG2000Lossless
    assert received.PixelData == original.PixelData


def test_a_resent_identical_instance_is_idempotent(agent: Agent, tmp_path: Path,
                                                   data_dir: Path) -> None:
    sent = dicomgen.write_series(tmp_path / "s", 3)
    port = agent.server.port  # type: ignore[union-attr]
    assert scu.store(port, sent) == [0, 0, 0]
    assert scu.store(port, sent) == [0, 0, 0]
    assert len(archived_files(data_dir)) == 3
    assert agent.archive.counts().instances == 3  # type: ignore[union-attr]
    assert agent.status.snapshot().duplicates == 3


def test_different_content_under_a_known_uid_is_kept_aside_not_overwritten(
        agent: Agent, tmp_path: Path, data_dir: Path) -> None:
    [original] = dicomgen.write_series(tmp_path / "a", 1)
    ds = dcmread(original)
    ds.StudyDescription = "CHANGED"
    changed = tmp_path / "changed.dcm"
    ds.save_as(changed)
    port = agent.server.port  # type: ignore[union-attr]
    assert scu.store(port, [original]) == [0]
    assert scu.store(port, [changed]) == [0]
    [archived] = archived_files(data_dir)
    assert dicomgen.dataset_bytes(archived) == dicomgen.dataset_bytes(original)
    [kept] = list((data_dir / "conflicts").iterdir())
    assert dicomgen.dataset_bytes(kept) == dicomgen.dataset_bytes(changed)
    assert agent.archive.counts().conflicts == 1  # type: ignore[union-attr]


def test_a_uid_with_dot_dot_writes_nothing_outside_the_archive(agent: Agent, tmp_path: Path,
                                                               data_dir: Path) -> None:
    [path] = dicomgen.write_series(tmp_path / "evil", 1)
    ds = dcmread(path)
    ds.StudyInstanceUID = "../../../../escaped"
    ds.SeriesInstanceUID = "1.2/../../x"
    ds.save_as(path)
    before = set(tmp_path.rglob("*"))
    assert scu.store(agent.server.port, [path]) == [0xC000]  # type: ignore[union-attr]
    created = set(tmp_path.rglob("*")) - before
    assert all(p.is_relative_to(data_dir) for p in created)
    assert archived_files(data_dir) == []
    assert not list((data_dir / "tmp").iterdir())


def test_a_missing_study_uid_is_called_missing(agent: Agent, tmp_path: Path, data_dir: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    [path] = dicomgen.write_series(tmp_path / "nostudy", 1)
    ds = dcmread(path)
    del ds.StudyInstanceUID
    ds.save_as(path)
    assert scu.store(agent.server.port, [path]) == [0xC000]  # type: ignore[union-attr]
    assert "Study Instance UID is missing" in caplog.text
    assert "not a valid UID" not in caplog.text
    assert archived_files(data_dir) == []


def test_a_data_set_that_disagrees_with_its_command_gets_a900(agent: Agent, tmp_path: Path,
                                                              data_dir: Path) -> None:
    [path] = dicomgen.write_series(tmp_path / "m", 1)
    ds = dcmread(path)
    ds.file_meta.MediaStorageSOPInstanceUID = uid.generate_uid()  # the command uses this
    ds.save_as(path)
    assert scu.store(agent.server.port, [path]) == [0xA900]  # type: ignore[union-attr]
    assert archived_files(data_dir) == []


def test_an_unparseable_data_set_gets_c000(agent: Agent, tmp_path: Path, data_dir: Path) -> None:
    [path] = dicomgen.write_series(tmp_path / "g", 1)
    raw = path.read_bytes()
    header_end = len(raw) - len(dicomgen.dataset_bytes(path))
    path.write_bytes(raw[:header_end] + b"\x08\x00\x16\x00ZZ\x04\x00abcd")  # unknown VR
    assert scu.store(agent.server.port, [path]) == [0xC000]  # type: ignore[union-attr]
    assert archived_files(data_dir) == []
    assert not list((data_dir / "tmp").iterdir())


def test_below_the_free_space_floor_stores_are_refused_with_a700(
        tmp_path: Path, data_dir: Path, config_file: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    from agent import config as config_module

    raw = config_file.read_text().replace("min_free_mb = 0", "min_free_mb = 100000000")
    config_file.write_text(raw)
    caplog.set_level(logging.WARNING)
    with Agent(config_module.load_file(config_file)) as agent:
        sent = dicomgen.write_series(tmp_path / "f", 2)
        assert scu.store(agent.server.port, sent) == [0xA700, 0xA700]  # type: ignore[union-attr]
        assert agent.status.snapshot().refused == 2
    # the box's own trouble: said once, the second counted, whoever sent them
    said = "local trouble, C-STORE answered 0xA700: free disk space is below the floor"
    first, counted = [r.getMessage() for r in caplog.records if "local trouble" in r.getMessage()]
    assert first == said
    assert counted.startswith(f"1 more log lines like '{said}' from this box in the last ")
    assert archived_files(data_dir) == []
    assert not list((data_dir / "tmp").iterdir())


def test_a_peer_without_store_permission_is_offered_no_storage_context(
        tmp_path: Path, data_dir: Path, config_file: Path) -> None:
    from agent import config as config_module

    config_file.write_text(config_file.read_text().replace('"echo", "store"', '"echo"'))
    with Agent(config_module.load_file(config_file)) as agent:
        sent = dicomgen.write_series(tmp_path / "p", 1)
        result = storescu(agent.server.port, *sent)  # type: ignore[union-attr]
    assert result.returncode != 0
    assert "No Acceptable Presentation Contexts" in result.stderr
    assert archived_files(data_dir) == []


def test_an_unknown_calling_ae_is_rejected_at_association(agent: Agent, tmp_path: Path,
                                                          data_dir: Path) -> None:
    sent = dicomgen.write_series(tmp_path / "u", 1)
    result = storescu(agent.server.port, *sent, ae="STRANGER")  # type: ignore[union-attr]
    assert result.returncode != 0
    assert "Calling AE Title Not Recognized" in result.stdout + result.stderr
    assert archived_files(data_dir) == []


def test_a_connection_that_never_asks_for_an_association_is_let_go_at_once(
        agent: Agent) -> None:
    # a port probe or a health check: without care, each holds a thread for the
    # 30 s ACSE timeout, and stopping the agent waits for all of them
    assert agent.server is not None
    for _ in range(3):
        socket.create_connection(("127.0.0.1", agent.server.port), timeout=5).close()
    echo = [dcmtk("echoscu"), "-aet", "MODALITY", "-aec", "EDGE", "127.0.0.1",
            str(agent.server.port)]
    assert subprocess.run(echo, capture_output=True, timeout=30).returncode == 0
    wait_until(lambda: agent.server.active_associations() == 0,  # type: ignore[union-attr]
               10, "the probes' associations to end")


@pytest.mark.slow
def test_a_sender_aborting_mid_data_set_leaves_nothing_behind(agent: Agent, tmp_path: Path,
                                                              data_dir: Path) -> None:
    big = dicomgen.large_instance(tmp_path / "big.dcm", 200 * 1048576)
    command = [dcmtk("storescu"), "-aet", "MODALITY", "-aec", "EDGE", "127.0.0.1",
               str(agent.server.port), str(big)]  # type: ignore[union-attr]
    sender = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        tmp = data_dir / "tmp"
        wait_until(lambda: any(p.stat().st_size > 1048576 for p in tmp.iterdir()), 60,
                   "the receive to be under way")
        sender.kill()
    finally:
        sender.wait(10)
    wait_until(lambda: not list(tmp.iterdir()), 30, "the partial data set to be discarded")
    assert archived_files(data_dir) == []
    assert agent.archive.counts().instances == 0  # type: ignore[union-attr]
    assert agent.status.snapshot().received == 0


@pytest.mark.parametrize("stored", ["../etc/passwd", "/etc/passwd", "archive/../../x", ""])
def test_an_indexed_path_that_would_leave_the_archive_is_refused(tmp_path: Path,
                                                                  stored: str) -> None:
    from agent.archive.layout import Layout

    with pytest.raises(ValueError, match="leaves the archive"):
        Layout(tmp_path).absolute(stored)
    assert Layout(tmp_path).absolute("archive/1.2/3.4/5.6.dcm") == (
        tmp_path.resolve() / "archive" / "1.2" / "3.4" / "5.6.dcm")
