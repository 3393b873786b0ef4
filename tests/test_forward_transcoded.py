"""Forwarding to a destination that accepts none of an instance's stored syntaxes (DCMTK
storescp with its defaults: uncompressed only): the instance goes decompressed, pixels
equal to pydicom's decoding of the original, and the archived file never changes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import dicomgen
import numpy as np
import pytest
from pydicom import dcmread, uid

from agent import config as config_module
from agent.app import Agent
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
