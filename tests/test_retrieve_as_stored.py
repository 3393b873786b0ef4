"""C-MOVE and C-GET as outside clients drive them: lists of UIDs, several transfer
syntaxes in one proposed context, and instances coming back exactly as they were stored.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dicomgen
import pytest
from pydicom import dcmread, uid
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.pixels.decoders.base import get_decoder
from pynetdicom import AE, build_role, evt
from pynetdicom.presentation import build_context

from agent import config as config_module
from agent.app import Agent
from agent.dicom import codecs
from tests import scu
from tests.support import dcmtk, free_port, peer, storescp, write_config

STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
# getscu's preference flag for each stored syntax: it then proposes that syntax first
# and the uncompressed ones after it, all in one presentation context per SOP class
GETSCU_PREFERS = {
    uid.JPEG2000: "+xw",
    uid.JPEG2000Lossless: "+xv",
    uid.JPEGLSLossless: "+xt",
    uid.RLELossless: "+xr",
    uid.ExplicitVRBigEndian: "+xb",
    uid.ImplicitVRLittleEndian: "+xi",
    uid.JPEGBaseline8Bit: "+xy",
    uid.JPEGExtended12Bit: "+xx",
    uid.JPEGLosslessSV1: "+xs",
}
EXTRA_SAMPLES = ("MR_small_bigendian.dcm", "MR_small_implicit.dcm")


@dataclass
class Served:
    """An agent holding two studies of two series each, and pydicom's samples."""

    port: int
    destination_port: int
    studies: list[str]
    series: dict[str, list[str]]  # study UID -> its series UIDs
    samples: list[Path]  # as sent, one per stored transfer syntax
    grouped: Path  # an instance carrying retired Group Length elements


def _with_group_lengths(path: Path) -> Path:
    """A copy of ``path`` with retired Group Length elements, made by DCMTK's dcmconv."""
    target = path.with_name("grouped.dcm")
    subprocess.run([dcmtk("dcmconv"), "+g", str(path), str(target)], check=True)
    return target


def _samples(directory: Path) -> list[Path]:
    """pydicom's compressed samples plus Big Endian and Implicit VR, with fresh UIDs."""
    paths = dicomgen.compressed_samples(directory / "compressed")
    for name in EXTRA_SAMPLES:
        source = get_testdata_file(name)
        assert source is not None, name
        ds = dcmread(source)
        ds.SOPInstanceUID = uid.generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID = uid.generate_uid()
        ds.SeriesInstanceUID = uid.generate_uid()
        target = directory / name
        ds.save_as(target)
        paths.append(target)
    return paths


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("as_stored")
    destination_port = free_port()
    config = config_module.load_file(write_config(
        root / "agent.toml",
        {"port": free_port(), "bind": "127.0.0.1", "data_dir": str(root / "data"),
         "min_free_mb": 0},
        {"CT": peer("MODALITY", allow=("store",)),
         "WS": peer("WS", allow=("echo", "find", "move", "get")),
         "DEST": peer("DEST", destination_port)}))
    patient = {"patient_id": "LIST1", "patient_name": "LIST^ONE"}
    studies, series, files = [], {}, []
    for _ in range(2):
        study = dicomgen.Study(**patient)
        studies.append(study.study_uid)
        series[study.study_uid] = []
        for number in (1, 2):
            written = dicomgen.write_series(root / "src" / f"{study.study_uid}-{number}", 3,
                                            size=8, study=study)
            series[study.study_uid].append(str(dcmread(written[0]).SeriesInstanceUID))
            files += written
    samples = _samples(root / "samples")
    grouped = _with_group_lengths(_copy(files[0], root / "g"))
    with Agent(config) as _agent:
        sent = [*files, *samples, grouped]
        assert scu.store(config.agent.port, sent) == [0] * len(sent)
        yield Served(config.agent.port, destination_port, studies, series, samples, grouped)


def _copy(path: Path, directory: Path) -> Path:
    """``path`` as a new instance in a study of its own."""
    ds = dcmread(path)
    ds.SOPInstanceUID = uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = uid.generate_uid()
    ds.SeriesInstanceUID = uid.generate_uid()
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / path.name
    ds.save_as(target, enforce_file_format=True)
    return target


def _keys(pairs: list[tuple[str, str]]) -> list[str]:
    return [arg for key, value in pairs for arg in ("-k", f"{key}={value}")]


def _received_uids(directory: Path) -> set[str]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in directory.iterdir()}


# -- lists of UIDs ------------------------------------------------------------------------

LIST_CASES = [
    ("-S", "SERIES"), ("-P", "SERIES"), ("-S", "STUDY"), ("-P", "STUDY"), ("-O", "STUDY"),
]


def _list_keys(served: Served, flag: str, level: str) -> tuple[list[str], int]:
    """Keys naming two series of one study, or both studies; and how many instances."""
    first = served.studies[0]
    keys: list[tuple[str, str]] = [("QueryRetrieveLevel", level)]
    if flag in ("-P", "-O"):
        keys.append(("PatientID", "LIST1"))
    if level == "SERIES":
        keys += [("StudyInstanceUID", first),
                 ("SeriesInstanceUID", "\\".join(served.series[first]))]
        return _keys(keys), 6
    keys.append(("StudyInstanceUID", "\\".join(served.studies)))
    return _keys(keys), 12


@pytest.mark.parametrize(("flag", "level"), LIST_CASES)
def test_movescu_with_a_list_of_uids_moves_every_one(served: Served, tmp_path: Path,
                                                     flag: str, level: str) -> None:
    keys, expected = _list_keys(served, flag, level)
    destination = storescp(tmp_path, served.destination_port, "+xa")
    try:
        result = subprocess.run([dcmtk("movescu"), "-aet", "WS", "-aec", "EDGE", "-aem", "DEST",
                                 flag, *keys, "127.0.0.1", str(served.port)],
                                capture_output=True, text=True, timeout=60)
    finally:
        destination.terminate()
        destination.wait(10)
    assert result.returncode == 0, result.stderr
    assert len(_received_uids(tmp_path)) == expected


@pytest.mark.parametrize(("flag", "level"), LIST_CASES)
def test_getscu_with_a_list_of_uids_gets_every_one(served: Served, tmp_path: Path,
                                                   flag: str, level: str) -> None:
    keys, expected = _list_keys(served, flag, level)
    result = subprocess.run([dcmtk("getscu"), "-aet", "WS", "-aec", "EDGE", flag, "-od",
                             str(tmp_path), *keys, "127.0.0.1", str(served.port)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert len(_received_uids(tmp_path)) == expected


# -- instances as stored ------------------------------------------------------------------

def _image_keys(path: Path) -> list[str]:
    ds = dcmread(path, stop_before_pixels=True)
    return _keys([("QueryRetrieveLevel", "IMAGE"), ("StudyInstanceUID", ds.StudyInstanceUID),
                  ("SeriesInstanceUID", ds.SeriesInstanceUID),
                  ("SOPInstanceUID", ds.SOPInstanceUID)])


def _syntax(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)


def test_getscu_offering_several_syntaxes_gets_each_sample_in_its_stored_syntax(
        served: Served, tmp_path: Path) -> None:
    for sample in served.samples:
        stored = _syntax(sample)
        flag = GETSCU_PREFERS[stored]
        target = tmp_path / sample.stem
        target.mkdir()
        result = subprocess.run([dcmtk("getscu"), "-aet", "WS", "-aec", "EDGE", "-S", flag,
                                 "-od", str(target), *_image_keys(sample), "127.0.0.1",
                                 str(served.port)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert "Release Failed" not in result.stderr, result.stderr
        [received_file] = list(target.iterdir())
        if stored != uid.ImplicitVRLittleEndian:  # getscu writes those files as Explicit VR
            assert _syntax(received_file) == stored, sample.name
        assert (dcmread(received_file).PixelData == dcmread(sample).PixelData), sample.name


def test_movescu_sends_each_sample_byte_identical(served: Served, tmp_path: Path) -> None:
    destination = storescp(tmp_path, served.destination_port, "+xa")
    try:
        for sample in served.samples:
            result = subprocess.run([dcmtk("movescu"), "-aet", "WS", "-aec", "EDGE", "-aem",
                                     "DEST", "-S", *_image_keys(sample), "127.0.0.1",
                                     str(served.port)], capture_output=True, text=True,
                                    timeout=60)
            assert result.returncode == 0, result.stderr
    finally:
        destination.terminate()
        destination.wait(10)
    received = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p
                for p in tmp_path.iterdir() if p.is_file()}
    for sample in served.samples:
        uid_ = str(dcmread(sample, stop_before_pixels=True).SOPInstanceUID)
        assert _syntax(received[uid_]) == _syntax(sample), sample.name
        assert dcmread(received[uid_]).PixelData == dcmread(sample).PixelData, sample.name


def _image_query(header: Dataset) -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID = header.StudyInstanceUID
    query.SeriesInstanceUID = header.SeriesInstanceUID
    query.SOPInstanceUID = header.SOPInstanceUID
    return query


def _get_raw(served: Served, path: Path, syntaxes: list[str]) -> tuple[str, bytes]:
    """C-GET one instance with pynetdicom, proposing ``syntaxes`` in one context; return the
    accepted syntax and the data set's bytes exactly as they came over the network."""
    header = dcmread(path, stop_before_pixels=True)
    sop_class = str(header.SOPClassUID)
    got: list[tuple[str, bytes]] = []

    def on_store(event: evt.Event) -> int:
        # the agent in this process made pynetdicom stream received data sets to a file
        raw = dicomgen.dataset_bytes(Path(event.dataset_path))
        got.append((str(event.context.transfer_syntax), raw))
        return 0x0000

    ae = AE(ae_title="WS")
    ae.requested_contexts = [build_context(STUDY_ROOT_GET), build_context(sop_class, syntaxes)]
    assoc = ae.associate("127.0.0.1", served.port, ae_title="EDGE",
                         ext_neg=[build_role(sop_class, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    query = _image_query(header)
    statuses = [int(s.Status) for s, _ in assoc.send_c_get(query, STUDY_ROOT_GET) if s]
    assoc.release()
    assert statuses[-1] == 0x0000, [hex(s) for s in statuses]
    [(syntax, raw)] = got
    return syntax, raw


def test_an_implicit_vr_instance_comes_back_implicit_when_both_are_offered(
        served: Served) -> None:
    [implicit] = [p for p in served.samples if p.name == "MR_small_implicit.dcm"]
    syntax, raw = _get_raw(served, implicit,
                           [uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian])
    assert syntax == uid.ImplicitVRLittleEndian
    assert raw == dicomgen.dataset_bytes(implicit)


def test_group_length_elements_come_back_as_stored(served: Served) -> None:
    syntax, raw = _get_raw(served, served.grouped, [uid.ExplicitVRLittleEndian])
    assert syntax == uid.ExplicitVRLittleEndian
    assert raw == dicomgen.dataset_bytes(served.grouped)
    assert raw[:4] == b"\x08\x00\x00\x00"  # (0008,0000) leads, as stored


def test_a_compressed_instance_that_cannot_be_decoded_here_fails_alone(
        served: Served, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # as on a platform without pylibjpeg-openjpeg's wheel: the agent runs in this process
    for syntax in (uid.JPEG2000, uid.JPEG2000Lossless):
        monkeypatch.setattr(get_decoder(syntax), "_available", {})
    monkeypatch.setattr(codecs, "_decodable", lambda syntax: get_decoder(syntax).is_available)
    caplog.set_level(logging.WARNING)
    [jpeg2000] = [p for p in served.samples if _syntax(p) == uid.JPEG2000]
    header = dcmread(jpeg2000, stop_before_pixels=True)
    ae = AE(ae_title="WS")
    ae.requested_contexts = [build_context(STUDY_ROOT_GET),
                             build_context(header.SOPClassUID, [uid.ExplicitVRLittleEndian])]
    assoc = ae.associate("127.0.0.1", served.port, ae_title="EDGE",
                         ext_neg=[build_role(header.SOPClassUID, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000)])
    assert assoc.is_established
    query = _image_query(header)
    status, identifier = list(assoc.send_c_get(query, STUDY_ROOT_GET))[-1]
    assert assoc.is_established  # nothing half-sent broke the association
    assoc.release()
    assert int(status.Status) == 0xA702  # every sub-operation failed
    assert int(status.NumberOfFailedSuboperations) == 1
    assert identifier.FailedSOPInstanceUIDList == header.SOPInstanceUID
    # a documented outcome: one warning in words, no pynetdicom error
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("did not send")]
    assert len(said) == 1
    assert said[0].startswith(f"did not send instance {header.SOPInstanceUID} to WS at 127.0.0.1:")
    assert said[0].endswith(": stored as JPEG 2000 Image Compression, and no JPEG 2000"
                            " decoder is installed (pylibjpeg-openjpeg) (a failed sub-operation)")
    assert not [r for r in caplog.records
                if r.name.startswith("pynetdicom") and r.levelno >= logging.WARNING]
