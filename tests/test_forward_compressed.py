"""Compression for the link: a destination with ``transfer_syntax = "jpeg-ls-lossless"``
gets uncompressed CT as JPEG-LS (Orthanc, a real PACS, says so), decoding to the very
pixels; the encoding is made once, verified, kept for a retry and cleaned after delivery.
"""

from __future__ import annotations

import io
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from bench.peers import Orthanc
from pydicom import dcmread, uid
from pydicom.data import get_testdata_file

from agent import config as config_module
from agent.app import Agent
from agent.archive.outbox import Job
from agent.config import ConfigError, load_file
from agent.dicom import compression
from agent.forward.link import Link
from tests import scu
from tests.support import free_port, peer, storescp, wait_until, write_config
from tests.test_forward import forward_config, jobs


def real_ct(directory: Path) -> list[Path]:
    """pydicom's real CT slices, uncompressed, with fresh UIDs: CT_small (128 x 128) and
    the 512 x 512 slice of J2K_pixelrep_mismatch, decompressed."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in ("CT_small.dcm", "J2K_pixelrep_mismatch.dcm"):
        source = get_testdata_file(name)
        assert source is not None, name
        ds = dcmread(source)
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress(generate_instance_uid=False)
        ds.SOPInstanceUID = uid.generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        target = directory / name
        ds.save_as(target, enforce_file_format=True)
        paths.append(target)
    return paths


def orthanc_file(orthanc: Orthanc, sop_instance_uid: str) -> bytes:
    """The file Orthanc stored for an instance: what came over the wire, as received."""
    [found] = orthanc.rest("/tools/lookup", sop_instance_uid.encode())
    url = f"http://127.0.0.1:{orthanc.http_port}/instances/{found['ID']}/file"
    with urllib.request.urlopen(url, timeout=30) as answer:
        return bytes(answer.read())


def _with_keys(config: Path, peer_name: str, keys: dict[str, str]) -> Path:
    text = config.read_text().replace(
        f"[peers.{peer_name}]\n",
        f"[peers.{peer_name}]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items()))
    config.write_text(text)
    return config


@pytest.mark.slow
def test_orthanc_stores_jpeg_ls_that_decodes_to_the_original_ct(
        orthanc: Orthanc, tmp_path: Path) -> None:
    config = config_module.load_file(_with_keys(
        forward_config(tmp_path, {"PACS": ("ORTHANC", orthanc.port)}, ["PACS"]), "PACS",
        {"transfer_syntax": '["jpeg-ls-lossless", "as-stored"]', "verify_lossless": "true"}))
    originals = real_ct(tmp_path / "ct")
    with Agent(config):
        assert scu.store(config.agent.port, originals) == [0] * len(originals)
        wait_until(lambda: orthanc.count() == len(originals), 60, "Orthanc to hold them")
        wait_until(lambda: set(jobs(tmp_path / "data").values()) == {"done"}, 30, "jobs done")
    stored = sent = 0
    for original in originals:
        before = dcmread(original)
        received = orthanc_file(orthanc, str(before.SOPInstanceUID))
        got = dcmread(io.BytesIO(received))
        assert got.file_meta.TransferSyntaxUID == uid.JPEGLSLossless, original.name
        assert np.array_equal(got.pixel_array, before.pixel_array), original.name
        assert "LossyImageCompression" not in got
        stored += original.stat().st_size
        sent += len(received)
    assert sent < stored * 0.75  # real CT: JPEG-LS saves a quarter at least
    cache = tmp_path / "data" / "cache" / "forward" / "PACS"
    assert not list(cache.iterdir())  # delivered: the encodings are gone


def _job(path: Path) -> Job:
    ds = dcmread(path, stop_before_pixels=True)
    return Job(1, str(ds.SOPInstanceUID), "PACS", 0, str(path), str(ds.SOPClassUID),
               str(ds.file_meta.TransferSyntaxUID), str(ds.StudyInstanceUID))


def test_an_encoding_is_made_once_kept_for_a_retry_and_cleaned(tmp_path: Path) -> None:
    [small, _] = real_ct(tmp_path / "ct")
    link = Link(tmp_path / "cache", tmp_path / "tmp")
    first = link.encoded(_job(small), small, uid.JPEGLSLossless, verify=True)
    again = link.encoded(_job(small), small, uid.JPEGLSLossless, verify=True)
    assert first == again and link.encodings == 1
    assert dcmread(first).file_meta.TransferSyntaxUID == uid.JPEGLSLossless
    link.delivered(_job(small).sop_instance_uid)
    assert not first.exists()


def test_the_cache_keeps_to_its_bound(tmp_path: Path) -> None:
    [small, large] = real_ct(tmp_path / "ct")
    link = Link(tmp_path / "cache", tmp_path / "tmp", limit=1)
    first = link.encoded(_job(small), small, uid.JPEGLSLossless, verify=False)
    second = link.encoded(_job(large), large, uid.JPEGLSLossless, verify=False)
    assert second.exists() and not first.exists()  # the older one went


def test_lossy_data_goes_as_stored_and_the_stored_syntax_is_always_a_fallback() -> None:
    choices = ("jpeg-ls-lossless", "deflate")
    assert compression.targets(choices, uid.JPEGBaseline8Bit) == [uid.JPEGBaseline8Bit]
    assert compression.targets(choices, uid.ExplicitVRLittleEndian) == [
        uid.JPEGLSLossless, uid.DeflatedExplicitVRLittleEndian, uid.ExplicitVRLittleEndian]
    assert compression.targets(("as-stored", "rle"), uid.ImplicitVRLittleEndian) == [
        uid.ImplicitVRLittleEndian, uid.RLELossless]


def test_a_destination_proposes_each_choice_then_the_stored_syntax_then_uncompressed() -> None:
    pairs = [("1.2.840.10008.5.1.4.1.1.2", uid.ExplicitVRLittleEndian)]
    proposed = [[str(s) for s in cx.transfer_syntax]
                for cx in compression.contexts(pairs, ("jpeg-ls-lossless", "as-stored"))]
    assert proposed == [[uid.JPEGLSLossless], [uid.ExplicitVRLittleEndian],
                        [uid.ImplicitVRLittleEndian]]


@pytest.mark.parametrize(("value", "said"), [
    ('"jpeg2000"', "'jpeg2000' is not one of as-stored, jpeg-ls-lossless"),
    ("[]", "names at least one of"),
    ('["rle", "rle"]', "names a syntax twice"),
])
def test_a_wrong_transfer_syntax_is_refused_naming_its_key(
        tmp_path: Path, value: str, said: str) -> None:
    path = write_config(tmp_path / "agent.toml",
                        {"port": free_port(), "data_dir": str(tmp_path / "data")},
                        {"PACS": peer("PACS", 104)})
    _with_keys(path, "PACS", {"transfer_syntax": value})
    with pytest.raises(ConfigError) as raised:
        load_file(path)
    assert "peers.PACS.transfer_syntax" in str(raised.value)
    assert said in str(raised.value)


def test_transfer_syntax_takes_one_string_or_a_list(tmp_path: Path) -> None:
    path = write_config(tmp_path / "agent.toml",
                        {"port": free_port(), "data_dir": str(tmp_path / "data")},
                        {"PACS": peer("PACS", 104)})
    assert load_file(path).peers["PACS"].transfer_syntax == ("as-stored",)
    _with_keys(path, "PACS", {"transfer_syntax": '"deflate"', "verify_lossless": "true"})
    loaded = load_file(path).peers["PACS"]
    assert loaded.transfer_syntax == ("deflate",) and loaded.verify_lossless


@pytest.mark.slow
def test_a_syntax_the_destination_refuses_falls_back_to_the_next(tmp_path: Path) -> None:
    port = free_port()
    config = config_module.load_file(_with_keys(
        forward_config(tmp_path, {"DEST": ("DEST", port)}, ["DEST"]), "DEST",
        {"transfer_syntax": '["jpeg-ls-lossless", "rle"]', "verify_lossless": "true"}))
    originals = real_ct(tmp_path / "ct")
    received = tmp_path / "received"
    destination = storescp(received, port, "+xr")  # RLE and uncompressed, no JPEG-LS
    try:
        with Agent(config):
            assert scu.store(config.agent.port, originals) == [0] * len(originals)
            wait_until(lambda: set(jobs(tmp_path / "data").values()) == {"done"}
                       and len(jobs(tmp_path / "data")) == len(originals), 60, "jobs done")
    finally:
        destination.terminate()
        destination.wait(10)
    got = {str(dcmread(p).SOPInstanceUID): dcmread(p) for p in received.iterdir()}
    for original in originals:
        before = dcmread(original)
        arrived = got[str(before.SOPInstanceUID)]
        assert arrived.file_meta.TransferSyntaxUID == uid.RLELossless
        assert np.array_equal(arrived.pixel_array, before.pixel_array)


def test_encodings_cut_short_are_removed_when_the_sender_starts(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    kept = cache / "1.2.3.1.2.840.10008.1.2.4.80.dcm"
    for name in (kept.name, f"{kept.name}.new", f"{kept.name}.new.part"):
        (cache / name).write_bytes(b"x")
    Link(cache, tmp_path / "tmp")
    assert sorted(p.name for p in cache.iterdir()) == [kept.name]
