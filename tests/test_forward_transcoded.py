"""Forwarding to a destination that accepts none of an instance's stored syntaxes (DCMTK
storescp with its defaults: uncompressed only): the instance goes decompressed, pixels
equal to pydicom's decoding of the original, and the archived file never changes.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import dicomgen
import numpy as np
import pytest
from pydicom import dcmread, uid

from agent import config as config_module
from agent.app import Agent
from agent.archive.index import connect
from tests import scu
from tests.support import free_port, storescp, wait_until
from tests.test_forward import forward_config, jobs


@pytest.mark.slow
def test_compressed_instances_reach_an_uncompressed_only_destination_decompressed(
        tmp_path: Path) -> None:
    port = free_port()
    config = config_module.load_file(forward_config(
        tmp_path, {"DEST": ("DEST", port)}, ["DEST"]))
    samples = dicomgen.compressed_samples(tmp_path / "samples")
    received = tmp_path / "received"
    destination = storescp(received, port)  # its defaults: uncompressed syntaxes only
    try:
        with Agent(config):
            assert scu.store(config.agent.port, samples) == [0] * len(samples)
            archived = list((tmp_path / "data" / "archive").rglob("*.dcm"))
            before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in archived}
            wait_until(lambda: set(jobs(tmp_path / "data").values()) == {"done"}
                       and len(jobs(tmp_path / "data")) == len(samples), 60, "jobs done")
            assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in archived} == before
    finally:
        destination.terminate()
        destination.wait(10)
    got = {str(dcmread(p).SOPInstanceUID): dcmread(p) for p in received.iterdir()}
    for sample in samples:
        original = dcmread(sample)
        arrived = got[str(original.SOPInstanceUID)]
        assert arrived.file_meta.TransferSyntaxUID in (
            uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian), sample.name
        assert np.array_equal(arrived.pixel_array, original.pixel_array), sample.name


# run first in the forwarding process: these packages as if not installed, modules and
# their entry points (pylibjpeg finds its plugins by entry point) alike
HIDING = """
import sys
from importlib import metadata
HIDDEN = ("jpeg_ls", "libjpeg")
for name in HIDDEN:
    sys.modules[name] = None
_entry_points = metadata.entry_points
def entry_points(**params):
    found = _entry_points(**params)
    if not params:
        return found
    return metadata.EntryPoints(
        ep for ep in found if ep.value.split(":")[0].split(".")[0] not in HIDDEN)
metadata.entry_points = entry_points
"""


def _job_errors(data_dir: Path) -> dict[str, tuple[str, str | None]]:
    conn = connect(data_dir / "index.sqlite", readonly=True)
    try:
        rows = conn.execute("SELECT SOPInstanceUID, state, last_error FROM forward_jobs")
        return {sop: (state, error) for sop, state, error in rows}
    finally:
        conn.close()


@pytest.mark.slow
def test_without_jpeg_decoders_in_the_forwarding_process_those_fail_saying_why(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the forwarding process starts with pyjpegls and libjpeg unimportable, as on a
    # platform without their wheels: JPEG-LS and JPEG cannot be decoded there
    hiding = tmp_path / "hiding"
    hiding.mkdir()
    (hiding / "sitecustomize.py").write_text(HIDING)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(hiding), *filter(None, [os.environ.get("PYTHONPATH")])]))
    port = free_port()
    config = config_module.load_file(forward_config(
        tmp_path, {"DEST": ("DEST", port)}, ["DEST"]))
    samples = dicomgen.compressed_samples(tmp_path / "samples")
    syntaxes = {str(dcmread(p).SOPInstanceUID): str(dcmread(p).file_meta.TransferSyntaxUID)
                for p in samples}
    hidden = {sop for sop, syntax in syntaxes.items() if syntax == uid.JPEGLSLossless}
    assert hidden
    received = tmp_path / "received"
    destination = storescp(received, port)
    try:
        with Agent(config):
            assert scu.store(config.agent.port, samples) == [0] * len(samples)
            wait_until(lambda: {s for s, _ in _job_errors(tmp_path / "data").values()}
                       <= {"done", "quarantined"} and len(_job_errors(tmp_path / "data"))
                       == len(samples), 60, "every job settled")
    finally:
        destination.terminate()
        destination.wait(10)
    settled = _job_errors(tmp_path / "data")
    for sop in hidden:
        state, error = settled[sop]
        assert state == "quarantined"
        assert error == ("cannot convert it: stored as JPEG-LS Lossless Image Compression,"
                         " and no JPEG-LS decoder is installed (pyjpegls)")
    jpeg = {sop for sop, syntax in syntaxes.items() if syntax in (
        uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit, uid.JPEGLosslessSV1)}
    assert all(settled[sop][0] == "quarantined" for sop in jpeg)
    others = set(syntaxes) - hidden - jpeg
    assert others and all(settled[sop][0] == "done" for sop in others)
    got = {str(dcmread(p).SOPInstanceUID) for p in received.iterdir()}
    assert got == others
