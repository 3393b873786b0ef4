"""MPPS and study completeness together, with pynetdicom as the modality: the N-SET
COMPLETED names the instances, and the study is complete the moment the last is stored,
not after a quiet period."""

from __future__ import annotations

from pathlib import Path

import dicomgen
from pydicom.uid import generate_uid

from agent.app import Agent
from tests.commitment_peers import store
from tests.mpps_peers import MOD_AE, Modality, creation, ending
from tests.support import free_port, write_config
from tests.test_studies import FakeClock, start, study, tick


def test_the_study_completes_when_the_last_instance_the_mpps_names_is_stored(
        tmp_path: Path, running: list[Agent]) -> None:
    config = write_config(
        tmp_path / "agent.toml",
        {"ae_title": "EDGE", "port": free_port(), "bind": "127.0.0.1",
         "data_dir": str(tmp_path / "data"), "min_free_mb": 0},
        {"MODALITY": {"ae_title": MOD_AE, "host": "127.0.0.1", "port": 104,
                      "allow": ["echo", "store", "mpps"]}},
    )
    clock = FakeClock(1000.0)
    agent = start(config, clock, running)
    port = agent.config.agent.port
    scanned = dicomgen.Study()
    images = list(dicomgen.series(3, study=scanned, size=8))
    uids = [str(ds.SOPInstanceUID) for ds in images]
    step = generate_uid()
    modality = Modality(port)
    try:
        assert modality.create(creation(scanned.study_uid), step).Status == 0x0000
        store(port, images[:2])
        assert modality.set(ending("COMPLETED", uids, []), step).Status == 0x0000
    finally:
        modality.close()
    clock.now += 3600.0  # far past the quiet period: evidence outranks it
    tick(agent)
    shown = study(agent, scanned.study_uid)
    assert (shown["state"], shown["expected"], shown["missing"]) == ("arriving", 3, uids[2:])
    store(port, images[2:])  # its Success came after the study was judged complete
    shown = study(agent, scanned.study_uid)
    assert (shown["state"], shown["reason"], shown["received"], shown["missing"]) == (
        "complete", "mpps", 3, [])
