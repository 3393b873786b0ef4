"""DCMTK getscu and movescu with their default proposals (uncompressed only) retrieve every
pydicom sample the agent accepted: decompressed (or converted to little endian) by the
agent, pixels equal to pydicom's decoding of the original, the archived files unchanged.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread, uid
from pydicom.data import get_testdata_files
from pydicom.pixels.decoders.base import get_decoder

from agent import config as config_module
from agent.app import Agent
from agent.dicom import codecs
from tests import scu
from tests.support import dcmtk, free_port, peer, storescp, write_config

PATIENT = "CODECS1"
UNCOMPRESSED = (uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian, uid.ExplicitVRBigEndian)
# samples pydicom decodes whole but the agent cannot convert, and why
UNCONVERTIBLE = {
    "SC_rgb_jpeg.dcm": "its JPEG pixel data could not be decoded",  # a malformed item
}


@dataclass
class Sample:
    """One pydicom sample as sent to the agent: its copy, UID, syntax and pixels."""

    path: Path
    sop_instance_uid: str
    syntax: str
    pixels: np.ndarray


@dataclass
class Held:
    """An agent holding every sample it accepted, all of one patient."""

    port: int
    destination_port: int
    data_dir: Path
    samples: list[Sample]  # accepted and decodable by pydicom


def _copy(source: str, directory: Path) -> Sample | None:
    """``source`` with fresh UIDs and our patient; None if pydicom cannot decode it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = dcmread(source)
            if "PixelData" not in ds or "SOPClassUID" not in ds:
                return None
            pixels = ds.pixel_array
            ds.SOPInstanceUID = uid.generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.StudyInstanceUID = uid.generate_uid()
            ds.SeriesInstanceUID = uid.generate_uid()
            ds.PatientID = PATIENT
            ds.PatientName = "CODECS^ONE"
            target = directory / Path(source).name
            ds.save_as(target)
        except Exception:  # a sample pydicom cannot read, decode or write: no reference
            return None
    return Sample(target, str(ds.SOPInstanceUID), str(ds.file_meta.TransferSyntaxUID), pixels)


def _digests(data_dir: Path) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in (data_dir / "archive").rglob("*.dcm")}


@pytest.fixture(scope="module")
def held(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Held]:
    root = tmp_path_factory.mktemp("transcoded")
    (root / "samples").mkdir()
    destination_port = free_port()
    config = config_module.load_file(write_config(
        root / "agent.toml",
        {"port": free_port(), "bind": "127.0.0.1", "data_dir": str(root / "data"),
         "min_free_mb": 0},
        {"CT": peer("MODALITY", allow=("store",)),
         "WS": peer("WS", allow=("echo", "find", "move", "get")),
         "DEST": peer("DEST", destination_port)}))
    copies = [c for f in get_testdata_files() if (c := _copy(f, root / "samples"))]
    with Agent(config) as _agent:
        accepted = []
        for sample in copies:  # one association each: a refused context fails that one only
            try:
                [status] = scu.store(config.agent.port, [sample.path])
                if status == 0x0000 or status >> 12 == 0xB:  # success, or with a warning
                    accepted.append(sample)
            except ConnectionError:
                continue
        assert len(accepted) > 60, [s.path.name for s in accepted]
        assert {s.syntax for s in accepted} > {uid.JPEG2000, uid.JPEGLSLossless, uid.RLELossless}
        before = _digests(root / "data")
        yield Held(config.agent.port, destination_port, root / "data", accepted)
        assert _digests(root / "data") == before  # the archived files never changed


def _received(directory: Path) -> dict[str, Path]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p
            for p in directory.iterdir() if p.is_file()}


def _check(held: Held, received: dict[str, Path]) -> None:
    """Every sample arrived uncompressed with its pixels, but the unconvertible ones."""
    missing = []
    for sample in held.samples:
        if sample.path.name in UNCONVERTIBLE and sample.syntax not in UNCOMPRESSED:
            assert sample.sop_instance_uid not in received, sample.path.name
            continue
        if sample.sop_instance_uid not in received:
            missing.append(sample.path.name)
            continue
        got = dcmread(received[sample.sop_instance_uid])
        assert got.file_meta.TransferSyntaxUID in UNCOMPRESSED, sample.path.name
        assert np.array_equal(got.pixel_array, sample.pixels), sample.path.name
        if sample.syntax in codecs.LOSSY:
            assert got.LossyImageCompression == "01", sample.path.name
    assert not missing


def _patient_keys() -> list[str]:
    return ["-P", "-k", "QueryRetrieveLevel=PATIENT", "-k", f"PatientID={PATIENT}"]


@pytest.mark.slow
def test_getscu_with_its_default_proposals_gets_every_sample_decompressed(
        held: Held, tmp_path: Path) -> None:
    result = subprocess.run([dcmtk("getscu"), "-aet", "WS", "-aec", "EDGE", "-od", str(tmp_path),
                             *_patient_keys(), "127.0.0.1", str(held.port)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    _check(held, _received(tmp_path))


@pytest.mark.slow
def test_movescu_to_a_default_storescp_moves_every_sample_decompressed(
        held: Held, tmp_path: Path) -> None:
    destination = storescp(tmp_path, held.destination_port)  # its defaults: uncompressed
    try:
        result = subprocess.run([dcmtk("movescu"), "-aet", "WS", "-aec", "EDGE", "-aem", "DEST",
                                 *_patient_keys(), "127.0.0.1", str(held.port)],
                                capture_output=True, text=True, timeout=300)
    finally:
        destination.terminate()
        destination.wait(10)
    _check(held, _received(tmp_path))
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_without_a_jpeg_ls_decoder_those_instances_fail_with_the_reason_and_the_rest_go(
        held: Held, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    # as on a platform without pyjpegls's wheel (the agent runs in this process)
    for syntax in (uid.JPEGLSLossless, uid.JPEGLSNearLossless):
        monkeypatch.setattr(get_decoder(syntax), "_available", {})
    monkeypatch.setattr(codecs, "_decodable", lambda syntax: get_decoder(syntax).is_available)
    caplog.set_level(logging.WARNING)
    hidden = {s.sop_instance_uid for s in held.samples
              if s.syntax in (uid.JPEGLSLossless, uid.JPEGLSNearLossless)}
    assert hidden
    result = subprocess.run([dcmtk("getscu"), "-aet", "WS", "-aec", "EDGE", "-od", str(tmp_path),
                             *_patient_keys(), "127.0.0.1", str(held.port)],
                            capture_output=True, text=True, timeout=300)
    received = _received(tmp_path)
    assert not hidden & set(received)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("did not send")]
    for instance in hidden:
        [line] = [m for m in said if instance in m]
        assert "no JPEG-LS decoder is installed (pyjpegls)" in line
    others = [s for s in held.samples if s.sop_instance_uid not in hidden
              and s.path.name not in UNCONVERTIBLE]
    assert all(s.sop_instance_uid in received for s in others)
    assert result.returncode == 0, result.stderr
