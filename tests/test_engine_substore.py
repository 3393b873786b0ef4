"""The engine's own C-STORE of a stored file: the file meta it reads must be pydicom's,
the context it picks one the peer accepted, and its hold on the reactor a real one.
(What arrives at the peer, byte for byte, is tests/test_retrieve_as_stored.py.)
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom.dsutils import split_dataset

from agent.net.engine.reactor import ParkingGate
from agent.net.engine.substore import HEAD, WHOLE, _parse_meta, context_id, file_meta

SAMPLES = ("CT_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "JPEG2000.dcm",
           "rtplan.dcm")


def _written(path: Path, *, private_meta: bytes = b"", pixels: bytes = b"") -> Path:
    """An instance written by pydicom, optionally with a long private meta element."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if private_meta:
        meta.add_new(0x00020102, "OB", private_meta)  # Private Information
        meta.add_new(0x00020100, "UI", "1.2.3")  # its Creator UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = "Test^Meta"
    if pixels:
        ds.add_new(0x7FE00010, "OB", pixels)
    ds.save_as(path, enforce_file_format=True)
    return path


def _expected(path: Path) -> tuple[int, str, str, str]:
    meta, offset = split_dataset(path)
    return (offset, meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID,
            meta.TransferSyntaxUID)


def _found(path: Path) -> tuple[int, str, str, str]:
    meta = file_meta(path)
    return meta.offset, meta.sop_class, meta.sop_instance, meta.syntax


@pytest.mark.parametrize("name", SAMPLES)
def test_the_file_meta_read_is_pydicoms(name: str) -> None:
    path = Path(get_testdata_file(name))
    assert _parse_meta(path.read_bytes()[:HEAD]) is not None  # the small parser took it
    assert _found(path) == _expected(path)


def test_a_file_meta_longer_than_the_first_read_is_read_by_pydicom(tmp_path: Path) -> None:
    path = _written(tmp_path / "long.dcm", private_meta=b"\x01" * (2 * HEAD))
    assert _parse_meta(path.read_bytes()[:HEAD]) is None
    assert _found(path) == _expected(path)
    assert dcmread(path).PatientName == "Test^Meta"


def test_a_written_file_and_its_data_set_start(tmp_path: Path) -> None:
    path = _written(tmp_path / "plain.dcm", private_meta=b"\x02" * 10)
    assert _found(path) == _expected(path)


def test_a_file_without_a_preamble_fails_as_pynetdicom_would(tmp_path: Path) -> None:
    path = tmp_path / "raw.dcm"
    path.write_bytes(b"\x08\x00\x16\x00" + b"\0" * 200)
    with pytest.raises(Exception) as ours:
        file_meta(path)
    with pytest.raises(Exception) as theirs:
        split_dataset(path)
    assert type(ours.value) is type(theirs.value)


class _Association:
    """Just the accepted contexts of an association."""

    def __init__(self, *contexts: tuple[int, str, str, bool]) -> None:
        self.accepted_contexts = [
            SimpleNamespace(context_id=cx, abstract_syntax=sop, transfer_syntax=[ts], as_scu=scu)
            for cx, sop, ts, scu in contexts]


def test_the_context_is_an_accepted_one_we_may_send_on() -> None:
    ct, mr = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"
    assoc = _Association((1, ct, "1.2.840.10008.1.2", False), (3, ct, "1.2.840.10008.1.2", True),
                         (5, ct, "1.2.840.10008.1.2.1", True), (7, mr, "1.2.840.10008.1.2", True))
    assert context_id(assoc, ct, "1.2.840.10008.1.2") == 3  # not 1: there we are not SCU
    assert context_id(assoc, ct, "1.2.840.10008.1.2.1") == 5
    assert context_id(assoc, mr, "1.2.840.10008.1.2") == 7
    with pytest.raises(ValueError, match="no accepted context"):
        context_id(assoc, mr, "1.2.840.10008.1.2.1")


def test_a_held_gate_keeps_the_reactor_off_without_waking_it() -> None:
    gate = threading.Event()
    gate.set()
    gate.lock = threading.Lock()  # type: ignore[attr-defined]
    gate.wake = threading.Event()  # type: ignore[attr-defined]
    gate.__class__ = ParkingGate
    assert isinstance(gate, ParkingGate)
    gate.hold()
    assert not gate.is_set()
    assert not gate.wake.is_set()  # the sender does not wait for the reactor to park
    gate.set()
    gate.clear()
    assert gate.wake.is_set()  # pynetdicom's own send_* still wake it to park


@pytest.mark.parametrize("size", [100, 70_000, WHOLE + 5000])
def test_the_data_set_sent_is_the_files_from_its_offset_whether_read_at_once_or_not(
        tmp_path: Path, size: int) -> None:
    from agent.net.engine.commands import _chunks
    from agent.net.engine.substore import ReadPath

    path = _written(tmp_path / "sized.dcm", pixels=bytes(range(256)) * (size // 256 + 1))
    meta = file_meta(path)
    assert (meta.contents is not None) == (path.stat().st_size <= WHOLE)
    where = ReadPath((path, meta.offset))
    where.contents = meta.contents
    expected = path.read_bytes()[meta.offset:]
    for piece_size in (16378, 1 << 20):
        assert b"".join(_chunks(None, where, piece_size)) == expected
        assert b"".join(_chunks(None, (path, meta.offset), piece_size)) == expected
        assert all(len(piece) <= piece_size for piece in _chunks(None, where, piece_size))


class _Assoc:
    """Any object an association can be: the read-ahead is kept per association."""


def test_a_file_read_ahead_is_used_only_for_that_file_and_only_once(tmp_path: Path) -> None:
    from agent.net.engine.substore import _read_ahead, _taken_ahead

    first, second = _written(tmp_path / "1.dcm"), _written(tmp_path / "2.dcm")
    assoc, other = _Assoc(), _Assoc()
    _read_ahead(assoc, first)
    assert _taken_ahead(other, first) is None  # another association's
    taken = _taken_ahead(assoc, first)
    assert taken is not None and taken.contents == first.read_bytes()
    assert _taken_ahead(assoc, first) is None  # once
    _read_ahead(assoc, first)
    assert _taken_ahead(assoc, second) is None  # a cancelled or reordered sequence
    assert _taken_ahead(assoc, first) is None


def test_a_file_that_cannot_be_read_ahead_fails_in_its_own_turn(tmp_path: Path) -> None:
    from agent.net.engine.substore import _read_ahead, _taken_ahead

    assoc = _Assoc()
    _read_ahead(assoc, tmp_path / "gone.dcm")  # no exception here
    assert _taken_ahead(assoc, tmp_path / "gone.dcm") is None
    with pytest.raises(FileNotFoundError):
        file_meta(tmp_path / "gone.dcm")


class _Reader:
    """The archive reader's path lookup, for the retrieve handlers."""

    def path_of(self, instance: object) -> Path:
        return Path("/archive") / instance.path  # type: ignore[attr-defined]


def test_each_sub_operation_names_the_next_file_so_it_can_be_read_ahead() -> None:
    from agent.archive.query import StoredInstance
    from agent.net.qr import PENDING, QueryRetrieveHandlers
    from agent.net.stored import StoredFile

    ct = "1.2.840.10008.5.1.4.1.1.2"
    instances = [StoredInstance(f"{n}.dcm", ct, f"1.2.3.{n}", "1.2.840.10008.1.2.1")
                 for n in range(3)]
    handlers = QueryRetrieveHandlers(None, _Reader(), lambda assoc: None)  # type: ignore[arg-type]
    event = SimpleNamespace(is_cancelled=False)
    sent = list(handlers._send(event, instances, None, None, "C-GET"))
    assert [status for status, _ in sent] == [PENDING] * 3
    files = [stored for _, stored in sent]
    assert all(isinstance(stored, StoredFile) for stored in files)
    assert [f.stored_path.name for f in files] == ["0.dcm", "1.dcm", "2.dcm"]  # type: ignore[union-attr]
    assert [f.following.name if f.following else None  # type: ignore[union-attr]
            for f in files] == ["1.dcm", "2.dcm", None]
    assert [f.SOPInstanceUID for f in files] == ["1.2.3.0", "1.2.3.1", "1.2.3.2"]  # type: ignore[union-attr]


class _Aborting:
    """An established association that notes being aborted."""

    is_requestor = True
    acceptor = SimpleNamespace(ae_title="DEST", address="10.0.0.9", port=104)
    dimse_timeout = 60.0

    def __init__(self) -> None:
        self.is_established, self.aborted = True, False
        self.acse = SimpleNamespace(is_aborted=lambda: False)

    def abort(self) -> None:
        self.aborted = True


def test_a_response_status_comes_back_as_pynetdicom_gives_it() -> None:
    from pynetdicom.dimse_primitives import C_STORE

    from agent.net.engine.substore import _status_of

    plain = C_STORE()
    plain.MessageIDBeingRespondedTo, plain.Status = 1, 0xB007
    status = _status_of(_Aborting(), plain, "1.2.3")
    assert status.Status == 0xB007 and len(status) == 1
    with pytest.raises(TypeError):
        status.Status = 0  # shared between sub-operations: it must not change
    detailed = C_STORE()
    detailed.MessageIDBeingRespondedTo, detailed.Status = 2, 0xA700
    detailed.ErrorComment = "no space"
    status = _status_of(_Aborting(), detailed, "1.2.3")
    assert (status.Status, status.ErrorComment) == (0xA700, "no space")
    status.Status = 0  # its own


@pytest.mark.parametrize("response", [None, "invalid"])
def test_no_response_or_an_invalid_one_aborts_and_fails_in_words(
        response: object, caplog: pytest.LogCaptureFixture) -> None:
    from pynetdicom.dimse_primitives import C_STORE

    from agent.net.engine.substore import _status_of

    assoc = _Aborting()
    answer = C_STORE() if response == "invalid" else None  # no Status: not a valid response
    status = _status_of(assoc, answer, "1.2.3.4")
    assert status.Status == 0x0110  # a failure pynetdicom counts, not an empty data set
    assert assoc.aborted
    [line] = [r.getMessage() for r in caplog.records]
    why = "its response was invalid" if response else "no response within the DIMSE timeout"
    assert line.startswith(f"C-STORE of instance 1.2.3.4 to DEST at 10.0.0.9:104 failed: {why}")
