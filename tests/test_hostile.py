"""Inputs from an attacker or a broken client must not stop the agent serving everyone else.

Raw sockets send what no real client would; pynetdicom and DCMTK clients stand for the
modality that must still get in.
"""

from __future__ import annotations

import logging
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dicomgen
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from agent import config as config_module
from agent.app import Agent
from tests import rawdicom as raw
from tests.conftest import MODALITY_AE
from tests.support import free_port, peer, wait_until, write_config

HANDSHAKE = 4.0  # the agent.handshake_timeout of these tests: generous for a busy machine
CT_CONTEXTS: list[raw.Context] = [
    (1, raw.CT_IMAGE, (raw.EXPLICIT,)), (3, raw.CT_IMAGE, (raw.IMPLICIT,))
]


@pytest.fixture
def hostile(tmp_path: Path) -> Iterator[Agent]:
    """The agent with a short handshake timeout, a modality peer, anyone may echo."""
    config = write_config(
        tmp_path / "agent.toml",
        {"ae_title": "EDGE", "port": free_port(), "bind": "127.0.0.1",
         "data_dir": str(tmp_path / "data"), "min_free_mb": 0,
         "handshake_timeout": HANDSHAKE, "network_timeout": 3,
         "allow_unknown": ["echo"]},
        {"CT": peer(MODALITY_AE, allow=("echo", "store"))},
    )
    running = Agent(config_module.load_file(config))
    running.start()
    try:
        yield running
    finally:
        running.close()


def port_of(agent: Agent) -> int:
    assert agent.server is not None
    return agent.server.port


def wait_ended(agent: Agent, count: int, timeout: float = 30.0) -> None:
    """Wait until the agent has finished with ``count`` connections in all."""
    assert agent.server is not None
    assert agent.server.wait_connections_ended(count, timeout), (
        f"only {agent.server.connections_ended()} of {count} connections ended"
    )


def tmp_files(agent: Agent) -> list[Path]:
    assert agent.archive is not None
    return sorted(agent.archive.layout.tmp_dir.iterdir())


def archived(agent: Agent) -> list[Path]:
    assert agent.archive is not None
    return sorted(agent.archive.layout.archive_dir.rglob("*.dcm"))


def echo(port: int, calling: str = MODALITY_AE) -> bool:
    """A C-ECHO from a pynetdicom client: True if it was answered Success."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    assoc = ae.associate("127.0.0.1", port, ae_title="EDGE")
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and int(status.Status) == 0
    finally:
        assoc.release()


def ct_dataset() -> Dataset:
    """One small synthetic CT instance (64x64 pixels)."""
    ds = next(iter(dicomgen.series(1)))
    del ds.file_meta
    return ds


# -- 3: malformed C-STORE commands ---------------------------------------------------


@pytest.mark.parametrize(
    "sop_class, message_id",
    [(raw.VERIFICATION, 1), (raw.CT_IMAGE, None)],
    ids=["non-storage SOP class", "no Message ID"],
)
def test_a_malformed_store_command_leaves_nothing_in_tmp(
    hostile: Agent, sop_class: str, message_id: int | None
) -> None:
    ds = ct_dataset()
    assoc = raw.RawAssociation.open(port_of(hostile), CT_CONTEXTS)
    try:
        command = raw.store_command(sop_class, str(ds.SOPInstanceUID), message_id)
        assoc.send_store(1, command, raw.dataset_bytes(ds, implicit=False))
        assoc.release()  # left unanswered: released; aborted: the release finds it closed
    finally:
        assoc.close()
    wait_ended(hostile, 1)
    assert tmp_files(hostile) == []
    assert archived(hostile) == []


# -- data sets that do not hold together ---------------------------------------------


def _truncated_pixels(claimed: int) -> Callable[[Dataset], bytes]:
    def build(ds: Dataset) -> bytes:
        del ds.PixelData
        header = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, claimed)
        return raw.dataset_bytes(ds, implicit=False) + header + bytes(64)

    return build


def _encoded(implicit: bool) -> Callable[[Dataset], bytes]:
    return lambda ds: raw.dataset_bytes(ds, implicit=implicit)


@pytest.mark.parametrize(
    "context_id, build",
    [
        (1, _truncated_pixels(128)),
        (1, _truncated_pixels(0x80000000)),
        (1, _encoded(implicit=True)),
        (3, _encoded(implicit=False)),
    ],
    ids=["pixel data 128 of 64", "pixel data 2 GB of 64", "implicit on explicit",
         "explicit on implicit"],
)
def test_a_data_set_that_does_not_hold_together_is_refused(
    hostile: Agent, context_id: int, build: Callable[[Dataset], bytes]
) -> None:
    ds = ct_dataset()
    assoc = raw.RawAssociation.open(port_of(hostile), CT_CONTEXTS)
    try:
        command = raw.store_command(raw.CT_IMAGE, str(ds.SOPInstanceUID))
        assoc.send_store(context_id, command, build(ds))
        assert assoc.read_status() == 0xC000
        assert assoc.release() == raw.RELEASE_RP
    finally:
        assoc.close()
    wait_ended(hostile, 1)
    assert archived(hostile) == []
    assert tmp_files(hostile) == []


def test_the_raw_client_stores_a_well_formed_data_set(hostile: Agent) -> None:
    """The control for the refusals above: the same path with good bytes is Success."""
    assoc = raw.RawAssociation.open(port_of(hostile), CT_CONTEXTS)
    try:
        for context_id, implicit in ((1, False), (3, True)):
            ds = ct_dataset()
            command = raw.store_command(raw.CT_IMAGE, str(ds.SOPInstanceUID))
            assoc.send_store(context_id, command, raw.dataset_bytes(ds, implicit=implicit))
            assert assoc.read_status() == 0x0000
        assoc.release()
    finally:
        assoc.close()
    assert len(archived(hostile)) == 2


# -- 4: idle connections, handshakes, limits -----------------------------------------


def test_idle_connections_do_not_lock_a_modality_out(hostile: Agent) -> None:
    port = port_of(hostile)
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(17)]
    try:
        started = time.monotonic()
        assert echo(port), "the modality's association was not accepted"
        assert time.monotonic() - started < HANDSHAKE
        for sock in idle:  # and each silent connection is closed by the agent
            sock.settimeout(HANDSHAKE + 20)
            assert sock.recv(1) == b""
    finally:
        for sock in idle:
            sock.close()


def test_an_idle_association_is_closed_after_network_timeout(hostile: Agent) -> None:
    assoc = raw.RawAssociation.open(port_of(hostile), [(1, raw.VERIFICATION, (raw.IMPLICIT,))])
    try:
        assoc.sock.settimeout(30)  # network_timeout is 3 s
        answer = raw.read_pdu(assoc.sock)
        assert answer is None or answer[0] == raw.ABORT
    finally:
        assoc.close()


def _dribble(sock: socket.socket, data: bytes, stop: threading.Event) -> None:
    """Send one byte every 0.3 s until told to stop or the agent closes."""
    for byte in data:
        if stop.wait(0.3):
            return
        try:
            sock.send(bytes([byte]))
        except OSError:
            return


@pytest.mark.parametrize("established", [False, True], ids=["handshake", "established"])
def test_a_peer_that_dribbles_is_cut_off(hostile: Agent, established: bool) -> None:
    """Byte by byte, a read never completes: the handshake or network timeout ends it."""
    port = port_of(hostile)
    if established:
        assoc = raw.RawAssociation.open(port, [(1, raw.VERIFICATION, (raw.IMPLICIT,))])
        sock, data = assoc.sock, raw.p_data(1, 3, bytes(4000))
    else:
        sock = socket.create_connection(("127.0.0.1", port))
        data = raw.associate_rq([(1, raw.VERIFICATION, (raw.IMPLICIT,))])
    stop = threading.Event()
    sender = threading.Thread(target=_dribble, args=(sock, data, stop))
    sender.start()
    try:
        sock.settimeout(30)  # the timeouts are 4 s (handshake) and 3 s (network)
        answer = raw.read_pdu(sock)
        assert answer is None or answer[0] == raw.ABORT
    finally:
        stop.set()
        sender.join()
        sock.close()


@pytest.mark.parametrize("context_id", [2, 0])
def test_an_even_presentation_context_id_is_refused_and_closed(
    hostile: Agent, context_id: int
) -> None:
    port = port_of(hostile)
    with socket.create_connection(("127.0.0.1", port), timeout=HANDSHAKE + 20) as sock:
        started = time.monotonic()
        sock.sendall(raw.associate_rq([(context_id, raw.VERIFICATION, (raw.IMPLICIT,))]))
        answer = raw.read_pdu(sock)
        assert answer is not None and answer[0] in (raw.ASSOCIATE_RJ, raw.ABORT)
        assert raw.read_pdu(sock) is None  # and then closed
        assert time.monotonic() - started < HANDSHAKE  # at once, not at a timeout
    assert echo(port)


def test_a_burst_of_connections_is_answered(hostile: Agent) -> None:
    """100 connects at once: each gets an answer (the listen backlog is 64)."""
    port = port_of(hostile)
    request = raw.associate_rq([(1, raw.VERIFICATION, (raw.IMPLICIT,))])
    socks = [socket.socket() for _ in range(100)]
    try:
        for sock in socks:
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
        for sock in socks:
            sock.settimeout(30)
            sock.sendall(request)
        answers = [raw.read_pdu(sock) for sock in socks]
        assert all(a is not None and a[0] in (raw.ASSOCIATE_AC, raw.ASSOCIATE_RJ) for a in answers)
    finally:
        for sock in socks:
            sock.close()


# -- 5: log volume ---------------------------------------------------------------------


def test_random_bytes_write_a_bounded_log(
    hostile: Agent, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(5)
    port = port_of(hostile)
    caplog.set_level(logging.INFO)
    for _ in range(300):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(rng.randbytes(rng.randrange(1, 200)))
    wait_ended(hostile, 300, timeout=60)
    records = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert len(records) <= 30, "\n".join(r.getMessage() for r in records)
    assert not any(r.exc_info or r.exc_text for r in records)
    assert "Traceback" not in capfd.readouterr().err
    assert echo(port)


# -- fuzzing -----------------------------------------------------------------------------


def _mutate(data: bytes, rng: random.Random) -> bytes:
    """One random mutation: flipped bytes, a cut, an insertion or a length field rewritten."""
    buffer = bytearray(data)
    choice = rng.randrange(5)
    at = rng.randrange(len(buffer))
    if choice == 0:
        for _ in range(rng.randint(1, 8)):
            buffer[rng.randrange(len(buffer))] ^= 1 << rng.randrange(8)
    elif choice == 1:
        del buffer[at:]
    elif choice == 2:
        buffer[at:at] = rng.randbytes(rng.randint(1, 64))
    elif choice == 3:
        value = rng.choice([0, 1, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, rng.getrandbits(32)])
        buffer[at : at + 4] = struct.pack(">I", value)
    else:
        buffer[at:at] = buffer[at : at + rng.randint(1, 256)]
    return bytes(buffer)


def _drain(sock: socket.socket, timeout: float = 10.0) -> None:
    """Stop sending and read whatever the agent answers until it closes."""
    sock.settimeout(timeout)
    try:
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass
    except OSError:
        pass


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@pytest.mark.slow
def test_fuzzed_input_leaves_the_agent_serving(hostile: Agent) -> None:
    rng = random.Random(20261201)
    port = port_of(hostile)
    assert echo(port)  # pynetdicom's own threads and caches warm up before the baseline
    threads, rss = threading.active_count(), _rss_bytes()
    ended = 1
    request = raw.associate_rq([*CT_CONTEXTS, (5, raw.VERIFICATION, (raw.IMPLICIT,))])
    ds = ct_dataset()
    store = raw.p_data(1, 3, raw.store_command(raw.CT_IMAGE, str(ds.SOPInstanceUID)))
    data = raw.dataset_bytes(ds, implicit=False)
    for round_ in range(300):
        if round_ % 3 == 0:  # a mutated A-ASSOCIATE-RQ
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            with sock:
                sock.sendall(_mutate(request, rng))
                _drain(sock)
        else:
            assoc = raw.RawAssociation.open(port, CT_CONTEXTS)
            with assoc.sock:
                if round_ % 3 == 1:  # mutated P-DATA PDUs carrying a C-STORE
                    assoc.sock.sendall(_mutate(store + raw.p_data(1, 2, data), rng))
                else:  # a well-framed C-STORE whose data set is mutated
                    assoc.send_store(1, raw.store_command(raw.CT_IMAGE, str(ds.SOPInstanceUID)),
                                     _mutate(data, rng))
                    assoc.sock.settimeout(10)
                    assert assoc.read_status() in (0x0000, 0xA900, 0xC000, None)
                _drain(assoc.sock)
        ended += 1
    wait_ended(hostile, ended, timeout=60)
    assert hostile.server is not None and hostile.server.serving()
    assert echo(port)
    assert tmp_files(hostile) == []
    wait_until(lambda: threading.active_count() <= threads, 20, "threads to end")
    assert _rss_bytes() - rss < 64 * 1048576


def test_one_host_cannot_take_every_waiting_slot(
    hostile: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Silent connections from one address beyond its share are closed at once."""
    from agent.net.engine.guards import GuardedAssociationServer

    monkeypatch.setattr(GuardedAssociationServer, "pending_per_host", 4)
    port = port_of(hostile)
    silent = []
    for _ in range(6):
        sock = socket.socket()
        sock.bind(("127.0.0.2", 0))  # the attacker; the modality is 127.0.0.1
        sock.connect(("127.0.0.1", port))
        silent.append(sock)
    try:
        started = time.monotonic()
        for sock in silent[4:]:
            sock.settimeout(HANDSHAKE + 20)
            assert sock.recv(1) == b""
        assert time.monotonic() - started < HANDSHAKE  # closed at once, not timed out
        assert echo(port)  # while another address is served
    finally:
        for sock in silent:
            sock.close()
