"""The engine's contract with pynetdicom: every private name it relies on (read from its
source by tests/engine_inventory.py, and listed in ``engine.PRIVATE_NAMES``) still exists,
the pin in pyproject.toml matches the version the engine was tested with, and the
event-driven loops really serve the associations of this process.
"""

from __future__ import annotations

import inspect
import re
import shutil
import sys
from pathlib import Path

import pynetdicom
import pytest
from pynetdicom import AE, association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.service_class import QueryRetrieveServiceClass

from agent.app import Agent

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib
from agent.net import engine
from agent.net.engine.dul import EventDrivenDUL
from agent.net.engine.reactor import ParkingGate, run_reactor
from tests.engine_inventory import (
    ENGINE,
    PYNETDICOM,
    Definitions,
    exists,
    inventory,
    label,
    pynetdicom_definitions,
)

REPO = Path(__file__).resolve().parent.parent
VERIFICATION = "1.2.840.10008.1.1"


KNOWN = pynetdicom_definitions()


@pytest.mark.parametrize(("owner", "name"), engine.PRIVATE_NAMES + engine.RELIED_ON,
                         ids=map(label, engine.PRIVATE_NAMES + engine.RELIED_ON))
def test_every_private_name_the_engine_uses_exists(owner: object, name: str) -> None:
    assert exists(owner, name, KNOWN), (
        f"pynetdicom {pynetdicom.__version__} has no {label((owner, name))}:"
        " the engine (agent/net/engine/) must be adapted before this pynetdicom is used")


def _differences(found: dict[tuple[object, str], list[str]]) -> list[str]:
    """What the inventory read from the source and ``engine.PRIVATE_NAMES`` disagree on."""
    listed = set(engine.PRIVATE_NAMES)
    return [f"used by the engine ({', '.join(found[pair])}), not in PRIVATE_NAMES: {label(pair)}"
            for pair in sorted(found.keys() - listed, key=label)] + [
            f"in PRIVATE_NAMES, not used as pynetdicom's by the engine: {label(pair)}"
            for pair in sorted(listed - found.keys(), key=label)]


def test_private_names_are_exactly_what_the_engine_source_uses() -> None:
    found, problems = inventory(known=KNOWN)
    assert problems == []
    assert _differences(found) == []
    assert len(engine.PRIVATE_NAMES) == len(set(engine.PRIVATE_NAMES))


def _engine_copy(tmp_path: Path, module: str, old: str, new: str) -> Path:
    """A copy of agent/net/engine/ with ``old`` replaced by ``new`` in ``module``."""
    copied = tmp_path / "engine"
    shutil.copytree(ENGINE, copied, ignore=shutil.ignore_patterns("__pycache__"))
    source = (copied / module).read_text()
    assert old in source
    (copied / module).write_text(source.replace(old, new))
    return copied


def test_a_private_name_renamed_in_the_engine_is_reported(tmp_path: Path) -> None:
    engine_dir = _engine_copy(tmp_path, "reactor.py", "_is_paused", "_is_paused_gone")
    found, problems = inventory(engine_dir, KNOWN)
    assert problems and all(re.fullmatch(
        r"reactor\.py:\d+: pynetdicom\.association\.Association has no _is_paused_gone", p)
        for p in problems)
    assert (association.Association, "_is_paused") not in found


def test_a_private_name_used_on_an_untyped_receiver_is_found_too(tmp_path: Path) -> None:
    engine_dir = _engine_copy(tmp_path, "dul.py", "self.assoc._dul_ready", "self.assoc._dul_gone")
    _, problems = inventory(engine_dir, KNOWN)
    [problem] = problems
    assert re.fullmatch(r"dul\.py:\d+: _dul_gone is defined by nothing in pynetdicom", problem)


def _pynetdicom_copy(tmp_path: Path, module: str, old: str, new: str) -> Definitions:
    """What a pynetdicom whose ``module`` says ``new`` for ``old`` defines."""
    copied = tmp_path / "pynetdicom"
    shutil.copytree(PYNETDICOM, copied, ignore=shutil.ignore_patterns(
        "__pycache__", "tests", "apps", "benchmarks"))
    source = (copied / module).read_text()
    assert old in source
    (copied / module).write_text(source.replace(old, new))
    return pynetdicom_definitions(copied)


def test_a_name_the_next_pynetdicom_renames_is_reported(tmp_path: Path) -> None:
    renamed = _pynetdicom_copy(tmp_path, "association.py", "_is_paused", "_paused")
    found, problems = inventory(known=renamed)
    assert problems and all("Association has no _is_paused" in p for p in problems)
    assert _differences(found) == ["in PRIVATE_NAMES, not used as pynetdicom's by the engine:"
                                   " pynetdicom.association.Association._is_paused"]


def test_an_override_of_a_name_the_next_pynetdicom_renames_is_reported(tmp_path: Path) -> None:
    """The engine's DUL overrides _read_pdu_data: renamed upstream, the override is dead."""
    renamed = _pynetdicom_copy(tmp_path, "dul.py", "_read_pdu_data", "_read_pdu")
    found, problems = inventory(known=renamed)
    assert problems == []  # the override now looks like a method of the engine's own...
    assert _differences(found) == [  # ... but PRIVATE_NAMES remembers it was pynetdicom's
        "in PRIVATE_NAMES, not used as pynetdicom's by the engine:"
        " pynetdicom.dul.DULServiceProvider._read_pdu_data"]
    assert not renamed.defines(DULServiceProvider, "_read_pdu_data")


def test_pynetdicom_still_follows_a_find_warning_with_a_success_of_its_own() -> None:
    """engine/finals.py drops that Success (two finals break DCMTK's findscu); a
    pynetdicom that stops sending it needs finals.py gone, or a zero-match C-FIND after
    a warning would lose its only response."""
    source = inspect.getsource(QueryRetrieveServiceClass._c_find_scp)
    branch = source[source.index("if status[0] == STATUS_WARNING"):]
    branch = branch[:branch.index("if status[0] == STATUS_PENDING")]
    assert "continue" in branch and "send_msg" in branch


def test_pynetdicom_is_pinned_to_the_tested_minor_version() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    [requirement] = [d for d in project["dependencies"] if d.startswith("pynetdicom")]
    major, minor = engine.TESTED_VERSION.split(".")
    pattern = rf"pynetdicom>={major}\.{minor}\.\d+,<{major}\.{int(minor) + 1}"
    assert re.fullmatch(pattern, requirement), f"{requirement!r} is not pinned to {pattern}"
    assert pynetdicom.__version__.startswith(engine.TESTED_VERSION + ".")


def test_associations_both_ways_run_the_event_driven_loops(agent: Agent) -> None:
    assert association.DULServiceProvider is EventDrivenDUL
    assert association.Association._run_reactor is run_reactor
    assert agent.server is not None
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate("127.0.0.1", agent.server.port, ae_title="EDGE")
    try:
        assert assoc.is_established
        assert isinstance(assoc.dul, EventDrivenDUL)
        assert assoc.send_c_echo().Status == 0x0000
        assert isinstance(assoc._reactor_checkpoint, ParkingGate)
    finally:
        assoc.release()
    assert not assoc.is_established


def _primitives() -> list[object]:
    """One of each message the agent sends, with the optional fields set and unset."""
    from io import BytesIO

    from pynetdicom.dimse_primitives import C_ECHO, C_FIND, C_GET, C_MOVE, C_STORE

    echo_rsp = C_ECHO()
    echo_rsp.MessageIDBeingRespondedTo, echo_rsp.Status = 7, 0
    echo_rsp.AffectedSOPClassUID = VERIFICATION
    store_rq = C_STORE()
    store_rq.MessageID, store_rq.Priority = 65535, 2
    store_rq.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    store_rq.AffectedSOPInstanceUID = "1.2.3.45"  # odd length: padded with a NUL
    store_rq.MoveOriginatorApplicationEntityTitle = "WS"
    store_rq.MoveOriginatorMessageID = 3
    store_rq.DataSet = BytesIO(b"\x08\x00\x16\x00")
    store_rsp = C_STORE()
    store_rsp.MessageIDBeingRespondedTo, store_rsp.Status = 9, 0xA700
    store_rsp.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    store_rsp.AffectedSOPInstanceUID = "1.2.3.4"
    store_rsp.ErrorComment = "disk below the floor"  # even length
    find_rsp = C_FIND()
    find_rsp.MessageIDBeingRespondedTo, find_rsp.Status = 1, 0xFF00
    find_rsp.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.1"
    find_rsp.Identifier = BytesIO(b"\x08\x00\x52\x00")
    find_fail = C_FIND()
    find_fail.MessageIDBeingRespondedTo, find_fail.Status = 1, 0xA900
    find_fail.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.1"
    find_fail.ErrorComment = "odd comment"
    find_fail.OffendingElement = [0x00100010, 0x00080020]
    get_rsp = C_GET()
    get_rsp.MessageIDBeingRespondedTo, get_rsp.Status = 4, 0xFF00
    get_rsp.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.3"
    get_rsp.NumberOfRemainingSuboperations = 299
    get_rsp.NumberOfCompletedSuboperations = 1
    get_rsp.NumberOfFailedSuboperations = 0
    get_rsp.NumberOfWarningSuboperations = 0
    move_rq = C_MOVE()
    move_rq.MessageID, move_rq.Priority = 2, 0
    move_rq.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.2"
    move_rq.MoveDestination = "EDGE"
    move_rq.Identifier = BytesIO(b"\x08\x00\x52\x00")
    return [echo_rsp, store_rq, store_rsp, find_rsp, find_fail, get_rsp, move_rq]


@pytest.mark.parametrize("primitive", _primitives(), ids=lambda p: type(p).__name__)
def test_commands_encoded_directly_match_pynetdicoms_bytes(primitive: object) -> None:
    from pynetdicom.dimse_messages import _MESSAGE_TYPES
    from pynetdicom.dsutils import encode

    from agent.net.engine.commands import _message_name, encode_command

    name = _message_name(primitive)
    message = dict(_MESSAGE_TYPES.values())[name]()
    message.primitive_to_message(primitive)
    expected = encode(message.command_set, True, True)
    has_data = message.command_set.CommandDataSetType == 0x0001
    assert encode_command(name, primitive, has_data) == expected


def _store_responses() -> list[object]:
    """C-STORE-RSPs as peers send them: plain, without UIDs, and with status details."""
    from pynetdicom.dimse_primitives import C_STORE

    plain = C_STORE()
    plain.MessageIDBeingRespondedTo, plain.Status = 65535, 0x0000
    plain.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    plain.AffectedSOPInstanceUID = "1.2.3.45"  # odd length: padded with a NUL
    bare = C_STORE()
    bare.MessageIDBeingRespondedTo, bare.Status = 3, 0xB000
    failed = C_STORE()
    failed.MessageIDBeingRespondedTo, failed.Status = 9, 0xA700
    failed.AffectedSOPInstanceUID = "1.2.3.4"
    failed.ErrorComment = "disk below the floor"
    offending = C_STORE()
    offending.MessageIDBeingRespondedTo, offending.Status = 9, 0xA900
    offending.OffendingElement = [0x00100010]
    return [plain, bare, failed, offending]


def _received(primitive: object) -> tuple[bytes, object]:
    """The command set bytes pynetdicom sends for ``primitive`` and what it decodes them to."""
    from pynetdicom.dimse_messages import C_STORE_RSP, DIMSEMessage
    from pynetdicom.dsutils import encode
    from pynetdicom.pdu_primitives import P_DATA

    message = C_STORE_RSP()
    message.primitive_to_message(primitive)
    command = encode(message.command_set, True, True)
    pdata = P_DATA()
    pdata.presentation_data_value_list.append((5, b"\x03" + command))
    decoder = DIMSEMessage()
    assert decoder.decode_msg(pdata)
    return command, decoder.message_to_primitive()


STORE_RSP_FIELDS = ("MessageIDBeingRespondedTo", "Status", "AffectedSOPClassUID",
                    "AffectedSOPInstanceUID", "ErrorComment", "OffendingElement", "_context_id",
                    "_dataset_path")


class _Receiving:
    """Just enough of an Association for a received response to be queued."""

    def __init__(self, *handlers: object) -> None:
        import queue
        from types import SimpleNamespace

        self.dimse = SimpleNamespace(message=None, msg_queue=queue.Queue())
        self.handlers = [(handler, None) for handler in handlers]

    def get_handlers(self, event: object) -> list[object]:
        from pynetdicom import evt

        return list(self.handlers) if event is evt.EVT_DIMSE_RECV else []


@pytest.mark.parametrize("primitive", _store_responses(), ids=["plain", "bare", "comment", "tag"])
def test_store_responses_decoded_directly_match_pynetdicoms(primitive: object) -> None:
    from agent.net.engine.responses import deliver_store_response

    command, expected = _received(primitive)
    assoc = _Receiving()
    taken = deliver_store_response(assoc, [(5, b"\x03" + command)])
    if primitive.ErrorComment or primitive.OffendingElement:
        assert not taken and assoc.dimse.msg_queue.empty()  # pynetdicom decodes these
        return
    assert taken
    context_id, decoded = assoc.dimse.msg_queue.get_nowait()
    assert context_id == 5
    for field in STORE_RSP_FIELDS:
        assert getattr(decoded, field) == getattr(expected, field), field
        assert type(getattr(decoded, field)) is type(getattr(expected, field)), field


def test_store_responses_go_to_pynetdicom_when_watched_split_or_mid_message() -> None:
    from agent.net.engine.responses import deliver_store_response

    command, _ = _received(_store_responses()[0])
    assert not deliver_store_response(_Receiving(print), [(5, b"\x03" + command)])
    assert not deliver_store_response(_Receiving(), [(5, b"\x01" + command)])  # not last
    assert not deliver_store_response(_Receiving(), [(5, b"\x03" + command)] * 2)
    midway = _Receiving()
    midway.dimse.message = object()  # a message whose first fragments came already
    assert not deliver_store_response(midway, [(5, b"\x03" + command)])


@pytest.mark.parametrize("command", [
    b"",  # no Status
    b"\x00\x00\x00\x01\x02\x00\x00\x00\x01\x80",  # a CommandField only
    b"\x00\x00\x00\x09\x04\x00\x00\x00\x00\x00",  # Status with a 4-byte length
    b"\x00\x00\x00\x09\x02\x00\x00\x00\x00",  # truncated
])
def test_store_responses_that_are_not_plain_go_to_pynetdicom(command: bytes) -> None:
    from agent.net.engine.responses import plain_store_response

    assert plain_store_response(command) is None


def test_a_store_request_is_never_taken_for_a_response() -> None:
    from pynetdicom.dimse_primitives import C_ECHO

    from agent.net.engine.commands import encode_command
    from agent.net.engine.responses import plain_store_response

    echo = C_ECHO()
    echo.MessageIDBeingRespondedTo, echo.Status = 1, 0
    assert plain_store_response(encode_command("C-ECHO-RSP", echo, False)) is None


class _Dribbling:
    """A socket that takes at most ``step`` bytes per sendmsg, as a full buffer does."""

    def __init__(self, step: int) -> None:
        self.step, self.received = step, bytearray()

    def sendmsg(self, buffers: list[memoryview]) -> int:
        taken = b"".join(bytes(b) for b in buffers)[: self.step]
        self.received += taken
        return len(taken)


@pytest.mark.parametrize("step", [1, 3, 7, 1 << 20])
def test_gathered_writes_send_every_byte_in_order_even_when_partial(step: int) -> None:
    from agent.net.engine.dul import send_buffers

    buffers: list[bytes | memoryview] = [b"head", memoryview(b"0123456789")[2:8], b"", b"tail"]
    sock = _Dribbling(step)
    send_buffers(sock, buffers)  # type: ignore[arg-type]
    assert bytes(sock.received) == b"head234567tail"


def test_the_agents_own_received_data_set_guard_does_not_hold_responses_back() -> None:
    from agent.net.engine import guards
    from agent.net.engine.responses import deliver_store_response

    command, _ = _received(_store_responses()[0])
    guarded = _Receiving(guards.remember_received)
    assert deliver_store_response(guarded, [(5, b"\x03" + command)])
    both = _Receiving(guards.remember_received, print)
    assert not deliver_store_response(both, [(5, b"\x03" + command)])


def test_presentation_contexts_copy_deeply_and_completely(agent: Agent) -> None:
    import copy

    from pynetdicom.presentation import PresentationContext

    from agent.net.engine.copies import copy_context

    assert PresentationContext.__deepcopy__ is copy_context  # type: ignore[attr-defined]
    assert agent.server is not None
    originals = agent.server._server.contexts  # what pynetdicom copies for each association
    copies = copy.deepcopy(originals)
    assert len(copies) == len(originals) > 100
    for original, copied in zip(originals, copies, strict=True):
        assert copied is not original
        assert vars(copied) == vars(original)
    before = list(originals[0].transfer_syntax)
    copies[0].add_transfer_syntax("1.2.3.4.5")
    copies[0].scp_role = not originals[0].scp_role
    assert originals[0].transfer_syntax == before
    assert copies[0].scp_role != originals[0].scp_role


def test_received_data_sets_stream_through_the_module_s_named_temporary_file() -> None:
    """received.ReceivedFile replaces the name decode_msg calls, and offers what it uses."""
    import inspect

    from pynetdicom import dimse_messages

    from agent.net.engine import filemeta
    from agent.net.engine.received import ReceivedFile

    # pynetdicom's own decode_msg (filemeta.py wraps the name)
    source = inspect.getsource(filemeta._original_decode)
    for used in ("NamedTemporaryFile(", "self._data_set_file.write(",
                 "self._data_set_file.file.flush()", "Path(self._data_set_file.name)"):
        assert used in source, f"DIMSEMessage.decode_msg no longer does {used}..."
    engine.install()
    assert dimse_messages.NamedTemporaryFile is ReceivedFile
