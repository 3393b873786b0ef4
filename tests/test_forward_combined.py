"""The four forwarding features of issues 24 and 25 together, against real peers: a
DICOMweb destination compressing for the link (Orthanc's DICOMweb plugin stores JPEG-LS
that decodes to the original CT); a DICOM destination both coercing and compressing
(Orthanc's copy is JPEG-LS and coerced, the archived file untouched); an encoding of a
changed copy named by the change, so a reload of the rules encodes anew; a DICOMweb
destination's bandwidth cap holding on a real transfer.
"""

from __future__ import annotations

import copy as copy_module
import dataclasses
import io
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import dicomgen
import numpy as np
import pytest
from bench.peers import Orthanc
from pydicom import dcmread, uid
from pydicom.dataset import Dataset

from agent import config as config_module
from agent.app import Agent
from agent.archive import Archive
from agent.forward.forwarder import Forwarder
from agent.forward.link import Link
from agent.outgoing.writer import digest_of, prepare
from tests import scu
from tests.pacs import DICOMWEB_PLUGIN, OrthancWeb
from tests.stow_peer import Answer, ScriptedStow, all_stored
from tests.support import FixedRouting, archive_datasets, free_port, wait_until
from tests.test_dicomweb import USERS, basic, states, web_config
from tests.test_forward_backoff import ManualClock, Recorder, job_rows
from tests.test_forward_compressed import _job, real_ct
from tests.test_outgoing import agent_config, digests, jobs, received

needs_dicomweb = pytest.mark.skipif(not DICOMWEB_PLUGIN.exists(),
                                    reason="Orthanc's DICOMweb plugin (orthanc-dicomweb)")


@pytest.fixture
def orthanc_web(tmp_path: Path) -> Iterator[OrthancWeb]:
    """Orthanc with DICOMweb, basic auth for user ``edge``."""
    with OrthancWeb(tmp_path / "orthanc", USERS) as running:
        yield running  # type: ignore[misc]


def _cache(data_dir: Path, name: str) -> Path:
    return data_dir / "cache" / "forward" / name


@needs_dicomweb
@pytest.mark.slow
def test_a_dicomweb_destination_gets_jpeg_ls_that_decodes_to_the_original_ct(
        orthanc_web: OrthancWeb, tmp_path: Path) -> None:
    config = config_module.load_file(web_config(tmp_path, {
        **basic(tmp_path, orthanc_web.dicomweb, USERS["edge"]),
        "transfer_syntax": "jpeg-ls-lossless", "verify_lossless": True}))
    originals = real_ct(tmp_path / "ct")
    with Agent(config):
        assert scu.store(config.agent.port, originals) == [0] * len(originals)
        wait_until(lambda: states(tmp_path / "data") == {"done"}
                   and orthanc_web.count() == len(originals), 60, "every job done")
    for original in originals:
        before = dcmread(original)
        [found] = orthanc_web.rest("/tools/lookup", str(before.SOPInstanceUID).encode())
        got = dcmread(io.BytesIO(orthanc_web.raw(f"/instances/{found['ID']}/file")))
        assert got.file_meta.TransferSyntaxUID == uid.JPEGLSLossless, original.name
        assert np.array_equal(got.pixel_array, before.pixel_array), original.name
    cache = _cache(tmp_path / "data", "CLOUD")
    assert cache.is_dir()  # the encodings were made there...
    assert not list(cache.iterdir())  # ...and removed once delivered


@pytest.mark.slow
def test_a_coerced_copy_is_compressed_for_the_link_and_the_archive_stays(
        orthanc: Orthanc, tmp_path: Path) -> None:
    tables = '\n[peers.PACS.coerce]\nset = { InstitutionName = "X" }\n'
    config = config_module.load_file(agent_config(
        tmp_path, orthanc, {"transfer_syntax": "jpeg-ls-lossless", "verify_lossless": True},
        tables))
    originals = real_ct(tmp_path / "ct")
    with Agent(config):
        assert scu.store(config.agent.port, originals) == [0] * len(originals)
        archived = digests(tmp_path / "data")  # as acknowledged
        wait_until(lambda: orthanc.count() == len(originals), 60, "Orthanc to hold them")
        wait_until(lambda: {s for s, _ in jobs(tmp_path / "data")} == {"done"}, 30, "done")
    assert digests(tmp_path / "data") == archived and len(archived) == len(originals)
    by_uid = {str(ds.SOPInstanceUID): ds for ds in received(orthanc)}
    for original in originals:
        before = dcmread(original)
        got = by_uid[str(before.SOPInstanceUID)]
        assert got.file_meta.TransferSyntaxUID == uid.JPEGLSLossless, original.name
        assert got.InstitutionName == "X", original.name
        assert np.array_equal(got.pixel_array, before.pixel_array), original.name
    for path in (tmp_path / "data" / "archive").rglob("*.dcm"):
        assert dcmread(path, stop_before_pixels=True).InstitutionName != "X"
    assert not list(_cache(tmp_path / "data", "PACS").iterdir())


def _outgoing(tmp_path: Path, institution: str) -> config_module.Peer:
    return config_module.parse({
        "agent": {"data_dir": str(tmp_path / "data")},
        "peers": {"P": {"ae_title": "P", "host": "127.0.0.1", "port": 104,
                        "transfer_syntax": "jpeg-ls-lossless",
                        "coerce": {"set": {"InstitutionName": institution}}}},
    }).peers["P"]


def test_a_reload_changing_the_coercion_makes_a_new_encoding(tmp_path: Path) -> None:
    """The same instance, its copy changed under two sets of rules (a reload between):
    two encodings, each of its own copy; the earlier one is never sent after the reload."""
    [small, _] = real_ct(tmp_path / "ct")
    job = _job(small)
    link = Link(tmp_path / "cache", tmp_path / "tmp")
    made = {}
    for institution in ("Before", "After", "Before"):
        peer = _outgoing(tmp_path, institution)
        copy = prepare(peer.outgoing, small, tmp_path, "lane")
        assert copy.path != small
        variant = f"{digest_of(peer.outgoing)}."
        made[institution] = link.encoded(job, copy.path, uid.JPEGLSLossless, True, variant)
        encoded = dcmread(made[institution])
        assert encoded.InstitutionName == institution
        assert encoded.file_meta.TransferSyntaxUID == uid.JPEGLSLossless
    assert made["Before"] != made["After"]
    assert link.encodings == 2  # going back to the first rules finds its encoding kept
    link.delivered(job.sop_instance_uid)
    assert not list((tmp_path / "cache").iterdir())


CAP = 500_000  # bytes per second


def cloud_config(root: Path, url: str, **keys: Any) -> config_module.Config:
    """Forwarding to CLOUD, a DICOMweb service at ``url`` without auth, over two lanes."""
    return config_module.parse({
        "agent": {"data_dir": str(root / "data"), "port": free_port(), "bind": "127.0.0.1",
                  "min_free_mb": 0},
        "peers": {"CLOUD": {"kind": "dicomweb", "url": url, "auth": "none", **keys}},
        "forward": {"to": ["CLOUD"], "retry_first": 0.2, "retry_max": 0.5,
                    "associations": 2},
    })


def ingest(archive: Archive, datasets: Iterable[Dataset]) -> list[str]:
    """Archive each data set, queued for the archive's destinations; their UIDs."""
    return archive_datasets(archive, datasets)


@pytest.mark.slow
def test_a_dicomweb_destination_keeps_to_its_bandwidth_cap(tmp_path: Path) -> None:
    """About 3 MB by STOW-RS at 500 kB/s, two lanes sharing the bucket: the rate measured
    from the start to the last arrival does not exceed the cap by 10 % (an upper bound
    only, as in test_bandwidth_forward)."""
    with ScriptedStow([]) as service:
        config = cloud_config(tmp_path, service.url, max_instances=4, max_bytes_per_second=CAP)
        archive = Archive(tmp_path / "data", routing=FixedRouting("CLOUD"))
        uids = ingest(archive, dicomgen.series(24, modality="CT", size=256))
        size = sum(p.stat().st_size for p in (tmp_path / "data").rglob("*.dcm"))
        assert size > 5 * CAP
        forwarder = Forwarder(config, archive, Recorder(), ManualClock(time.time() + 1))
        try:
            started = time.monotonic()
            forwarder.start()
            wait_until(lambda: set(service.stored) == set(uids), 60, "every instance")
            rate = size / (time.monotonic() - started)
            bucket = forwarder.pacer("CLOUD").bucket
            assert bucket.taken >= size  # every file's bytes went through it
            assert bucket.waited > 0  # the requests were held back
            assert rate <= 1.1 * CAP, f"{rate:.0f} B/s against a cap of {CAP}"
        finally:
            forwarder.close()
            archive.close()


def test_a_dicomweb_destination_gets_de_identified_copies_compressed(tmp_path: Path) -> None:
    """De-identification and JPEG-LS for the same DICOMweb destination: each instance goes
    under its new UID, compressed, its pixels the original's; the answer naming the new
    UID counts as the job's delivery; the encodings are removed after."""
    originals = [dcmread(p) for p in real_ct(tmp_path / "ct")]
    with ScriptedStow([]) as service:
        config = cloud_config(tmp_path, service.url, deidentify="basic",
                              transfer_syntax="jpeg-ls-lossless", verify_lossless=True)
        archive = Archive(tmp_path / "data", routing=FixedRouting("CLOUD"))
        uids = ingest(archive, originals)
        forwarder = Forwarder(config, archive, Recorder(), ManualClock(time.time() + 1))
        try:
            forwarder.start()
            wait_until(lambda: {r[0] for r in job_rows(tmp_path / "data").values()} == {"done"},
                       60, "every job done")
        finally:
            forwarder.close()
            archive.close()
    assert len(service.stored) == len(originals) and not set(service.stored) & set(uids)
    got = [dcmread(io.BytesIO(data)) for data in service.stored.values()]
    for before in originals:
        [mine] = [ds for ds in got if ds.Rows == before.Rows]
        assert mine.file_meta.TransferSyntaxUID == uid.JPEGLSLossless
        assert np.array_equal(mine.pixel_array, before.pixel_array)
        assert mine.get("PatientName") != before.PatientName
    assert not list(_cache(tmp_path / "data", "CLOUD").iterdir())

def test_a_delivery_forgets_its_own_encodings_only(tmp_path: Path) -> None:
    """Instance UIDs can extend one another (``1.2.3`` and ``1.2.3.5``): the delivery of
    the first leaves the second's encoding, maybe part of a STOW-RS request not yet sent."""
    [small, _] = real_ct(tmp_path / "ct")
    job = _job(small)
    longer = dataclasses.replace(job, sop_instance_uid=f"{job.sop_instance_uid}.5")
    link = Link(tmp_path / "cache", tmp_path / "tmp")
    mine = link.encoded(job, small, uid.JPEGLSLossless, False)
    theirs = link.encoded(longer, small, uid.JPEGLSLossless, False, "0123456789ab.")
    link.delivered(job.sop_instance_uid)
    assert not mine.exists()
    assert theirs.exists()
    link.delivered(longer.sop_instance_uid)
    assert not theirs.exists()


def test_a_dicomweb_destination_changes_and_encodes_one_request_at_a_time(
        tmp_path: Path) -> None:
    """With coercion and compression, a request's copies are made when it is built, not
    those of every due job first (up to 200 changed copies of possibly large files on
    disk, and as many encodings before the first byte goes): when each request arrives,
    the lane's work directory holds the copies of that request and at most one more."""
    [small, _] = real_ct(tmp_path / "ct")
    seen: list[int] = []

    def count_copies(uids: list[str]) -> dict[str, tuple[str, int | None]]:
        seen.append(len(list((tmp_path / "data" / "outgoing").rglob("*.dcm"))))
        return all_stored(uids)

    with ScriptedStow([], Answer(instances=count_copies)) as service:
        config = cloud_config(tmp_path, service.url, max_instances=2,
                              transfer_syntax="jpeg-ls-lossless", coerce={
                                  "set": {"InstitutionName": "X"}})
        config = dataclasses.replace(config, forward=dataclasses.replace(
            config.forward, associations=1))
        archive = Archive(tmp_path / "data", routing=FixedRouting("CLOUD"))
        template = dcmread(small)
        uids = ingest(archive, [_fresh(template) for _ in range(10)])
        forwarder = Forwarder(config, archive, Recorder(), ManualClock(time.time() + 1))
        try:
            forwarder.start()
            wait_until(lambda: set(service.stored) == set(uids), 60, "every instance")
        finally:
            forwarder.close()
            archive.close()
    assert all(dcmread(io.BytesIO(d)).InstitutionName == "X" for d in service.stored.values())
    assert len(seen) == 5 and max(seen) <= 3, (seen, [r.uids for r in service.requests])


def _fresh(ds: Dataset) -> Dataset:
    copy = copy_module.deepcopy(ds)
    copy.SOPInstanceUID = uid.generate_uid()
    copy.file_meta.MediaStorageSOPInstanceUID = copy.SOPInstanceUID
    return copy
