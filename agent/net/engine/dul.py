"""A DUL that waits on its socket instead of polling it.

pynetdicom's DUL thread loops forever: one outgoing primitive *or* one incoming PDU per
turn, a zero-timeout ``select`` on the socket, then a 1 ms sleep when the turn found
nothing. Each PDU so waits up to a millisecond, a stream of outgoing PDUs starves the
reading side (a C-CANCEL stays unread), and an idle association burns CPU. This one
does, each turn, one read and one send while either has work, and otherwise blocks in
``select`` on the socket and a wake-up socket that ``send_pdu`` writes to, the nearer
of the ARTIM and idle timers (at most a second) as the timeout. The state machine,
the timers and every event are pynetdicom's own.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import select
import socket
import ssl
import struct
import threading
from collections.abc import Callable
from typing import Any

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu_primitives import P_DATA

from agent.net.engine import responses
from agent.net.engine.reactor import ParkingGate

log = logging.getLogger(__name__)

MAX_WAIT = 1.0  # seconds; timers are checked at least this often
MIN_WAIT = 0.001  # an expired timer must not turn the wait into a busy loop
# A-ASSOCIATE-RJ: permanent (1), DICOM UL service provider, ACSE related (2), no reason (1)
ASSOCIATE_RJ = bytes([0x03, 0, 0, 0, 0, 4, 0, 1, 2, 1])
# A-ABORT: source DICOM UL service provider (2), reason "invalid PDU parameter value" (6)
ABORT = bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 2, 6])
PDU_TYPES = frozenset(range(0x01, 0x08))  # A-ASSOCIATE-RQ ... A-ABORT
MAX_QUEUED = 8  # outgoing P-DATA primitives (one PDU each) a producer may run ahead by


class EncodedPData:
    """One or more whole P-DATA-TF PDUs, already encoded, to go out as one write.

    pynetdicom turns each P-DATA primitive into a PDU object, runs it through the state
    machine and sends it alone: per 16 KB PDU (the size DCMTK peers accept by default)
    that is most of the cost of sending a file. Messages whose PDUs the engine encodes
    itself queue them in this form, in order with every other primitive: a list of
    buffers (headers and views of the data) that one ``sendmsg`` gathers, so the data
    is not copied to be framed.
    """

    __slots__ = ("buffers",)

    def __init__(self, buffers: list[bytes | memoryview]) -> None:
        self.buffers = buffers

    def __len__(self) -> int:
        return sum(len(buffer) for buffer in self.buffers)


IOV_MAX = 1024  # buffers one sendmsg may gather (Linux's UIO_MAXIOV)


def send_buffers(sock: socket.socket, buffers: list[bytes | memoryview]) -> None:
    """Write every buffer, in order, gathering them into as few system calls as possible."""
    if isinstance(sock, ssl.SSLSocket):  # no sendmsg on TLS: one joined write instead
        sock.sendall(b"".join(buffers))
        return
    index, done = 0, 0  # the first buffer not wholly sent, and how much of it was
    while index < len(buffers):
        batch = buffers[index : index + IOV_MAX]
        if done:
            batch[0] = memoryview(batch[0])[done:]
        sent = sock.sendmsg(batch) + done
        while index < len(buffers) and sent >= len(buffers[index]):
            sent -= len(buffers[index])
            index += 1
        done = sent


def _held(assoc: Association) -> bool:
    """True if a sender has closed the association's gate: the reactor takes no message."""
    gate = getattr(assoc, "_reactor_checkpoint", None)
    return isinstance(gate, ParkingGate) and not gate.is_set()


def pdata_size(primitive: Any) -> int:
    """The bytes a P-DATA primitive or EncodedPData puts on the wire (0 for others): the
    PDU header, and each PDV's item header and value."""
    if isinstance(primitive, EncodedPData):
        return len(primitive)
    if isinstance(primitive, P_DATA):
        pdvs = primitive.presentation_data_value_list
        return 6 + sum(5 + len(data) for _context, data in pdvs)  # item length, context ID
    return 0


class EventDrivenDUL(DULServiceProvider):
    """pynetdicom's DUL service provider with a blocking, fair reactor loop.

    ``throttle``, when set (``engine.throttle``: forwarding associations with a bandwidth
    cap), is called with the size of each P-DATA a producing thread sends, before it is
    queued or written, and may block that thread (never this loop) or raise to end the send.
    """

    throttle: Callable[[int], None] | None = None

    def __init__(self, assoc: Association) -> None:
        super().__init__(assoc)
        self.wake_association = threading.Event()  # set whenever the state machine acted
        self._wake_in, self._wake_out = socket.socketpair()
        self._wake_in.setblocking(False)
        self._wake_out.setblocking(False)
        self._room = threading.Condition()
        self._send_lock = threading.Lock()
        self._ahead = b""  # TLS: bytes of the next PDU read ahead (see _tls_data_waits)

    def send_pdu(self, primitive: Any) -> None:
        """Queue a primitive for the peer and wake the loop to send it.

        P-DATA waits while MAX_QUEUED are already queued: a C-FIND streaming answers or a
        C-STORE of a large file cannot pile up in memory faster than the socket drains.
        """
        if self.throttle is not None and threading.current_thread() is not self:
            size = pdata_size(primitive)
            if size:
                self.throttle(size)
        if isinstance(primitive, EncodedPData) and self._send_directly(primitive):
            return
        if isinstance(primitive, (P_DATA, EncodedPData)) and threading.current_thread() is not self:
            with self._room:
                self._room.wait_for(self._has_room, timeout=self.network_timeout or MAX_WAIT * 60)
        super().send_pdu(primitive)
        self._nudge()

    def _send_directly(self, pdata: EncodedPData) -> bool:
        """Write ``pdata`` from the calling thread if nothing is ahead of it; True if done.

        Handing each write to the loop thread cost a wake-up (and a turn of the GIL)
        per write, on the critical path of every C-STORE sub-operation. The send lock,
        which the loop holds whenever it sends or acts, keeps the bytes of PDUs whole
        and in order; TLS sockets (one SSL object must not read and write at once from
        two threads) and anything already queued take the loop's path.
        """
        if threading.current_thread() is self:
            return False
        with self._send_lock:
            raw = getattr(self.socket, "socket", None)
            if (
                not isinstance(raw, socket.socket)
                or isinstance(raw, ssl.SSLSocket)
                or self.state_machine.current_state != "Sta6"
                or not self.to_provider_queue.empty()
                or not self.event_queue.empty()
                or self._kill_thread
            ):
                return False
            try:
                send_buffers(raw, pdata.buffers)
            except OSError:
                self.event_queue.put("Evt17")  # as pynetdicom's socket does: connection closed
                self._nudge()
        return True

    def _has_room(self) -> bool:
        if self._kill_thread or not self.is_alive():
            return True  # nobody will drain the queue: let the caller fail on its own
        return self.to_provider_queue.qsize() < MAX_QUEUED

    @property
    def _kill_thread(self) -> bool:
        """pynetdicom sets this to stop the loop (kill_dul, stop_dul): wake the loop to see it."""
        return self._killed

    @_kill_thread.setter
    def _kill_thread(self, value: bool) -> None:
        self._killed = value
        if value and hasattr(self, "_room"):
            self._nudge()
            with self._room:
                self._room.notify_all()

    def _nudge(self) -> None:
        with contextlib.suppress(OSError):  # full (a wake-up is pending anyway) or closed
            self._wake_out.send(b"\0")

    def run_reactor(self) -> None:
        """Serve the association until killed: act while there is work, else wait."""
        self._idle_timer.start()
        self.assoc._dul_ready.set()
        try:
            while not self._kill_thread:
                if self.artim_timer.expired:
                    self.event_queue.put("Evt18")
                if not self._turn():
                    self._wait()
        except Exception as exc:
            self._abort_on(exc)
        finally:
            with self._room:
                self._room.notify_all()
            self.wake_association.set()
            self._wake_in.close()
            self._wake_out.close()

    def _turn(self) -> bool:
        """One incoming PDU and one outgoing primitive, each if there is one; True if any."""
        worked = False
        if self._tls_data_waits() and self._is_transport_event():  # reads one PDU if any
            self._idle_timer.restart()
            worked = True
        with self._send_lock:  # every send and state change of the loop happens under it
            worked = self._act() or worked
            if self._send_encoded() or self._process_recv_primitive():  # latter queues an event
                worked = True
            return self._act() or worked

    def _tls_data_waits(self) -> bool:
        """False if a readable TLS socket carries no application data yet.

        This loop reads before it sends, and TLS 1.3 peers send session tickets right
        after the handshake: a blocking read would then wait for a PDU the peer sends
        only after our A-ASSOCIATE-RQ, which this loop has yet to send. A non-blocking
        read of one byte tells; the byte is kept in ``_ahead`` for the PDU it begins.
        """
        raw = getattr(self.socket, "socket", None)
        if not isinstance(raw, ssl.SSLSocket) or raw.pending():
            return True
        try:
            if not select.select([raw], [], [], 0)[0]:
                return False
            timeout = raw.gettimeout()
            raw.setblocking(False)
        except (OSError, ValueError):
            return True  # closed: pynetdicom's check reports it
        try:
            self._ahead = raw.recv(1)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return False
        except OSError:
            return True  # the read proper meets the error and reports the connection closed
        finally:
            with contextlib.suppress(OSError):
                raw.settimeout(timeout)
        if self._ahead:
            self._read_pdu_data()  # the PDU this byte begins
            self._idle_timer.restart()
            return False  # read here already
        return True  # the end of the connection: pynetdicom's read reports it

    def _read_pdu_data(self) -> None:
        """Read one PDU; a P-DATA-TF on an established association goes straight to DIMSE.

        For any other PDU, state, or a handler watching PDUs, pynetdicom's own path.
        """
        header = self._recv_exactly(6)
        if header is None:
            return
        pdu_type, _, length = struct.unpack(">BBI", header)
        if pdu_type not in PDU_TYPES:
            log.debug("unknown PDU type 0x%02X", pdu_type)
            self.event_queue.put("Evt19")
            return
        body = self._recv_exactly(length)
        if body is None:
            return
        if pdu_type == 0x04 and self._pdata_fast_lane():
            self._deliver_pdata(body)
            return
        try:
            pdu, event = self._decode_pdu(bytearray(header + body))
        except Exception as exc:  # pynetdicom: READ_PDU_EXC_F
            log.debug("cannot decode a received PDU: %r", exc)
            self.event_queue.put("Evt19")
            return
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)

    def _recv_exactly(self, count: int) -> bytes | None:
        """``count`` bytes from the peer, or None (and Evt17) if the connection ended."""
        ahead, self._ahead = self._ahead[:count], self._ahead[count:]
        try:
            rest = count - len(ahead)
            data = ahead + (bytes(self.socket.recv(rest)) if rest and self.socket else b"")
        except (OSError, TimeoutError):
            data = b""
        if len(data) != count:
            self.event_queue.put("Evt17")  # transport connection closed
            return None
        return data

    def _pdata_fast_lane(self) -> bool:
        if self.state_machine.current_state != "Sta6" or not self.event_queue.empty():
            return False
        return not any(
            self.assoc.get_handlers(event) for event in (evt.EVT_PDU_RECV, evt.EVT_DATA_RECV)
        )

    def _deliver_pdata(self, body: bytes) -> None:
        """Split a P-DATA-TF's items into a P-DATA primitive and hand it to DIMSE (DT-2)."""
        primitive = P_DATA()
        values = primitive.presentation_data_value_list
        position = 0
        while position + 5 <= len(body):
            (item_length,) = struct.unpack_from(">I", body, position)
            end = position + 4 + item_length
            if item_length < 2 or end > len(body):
                self.event_queue.put("Evt19")  # a PDV item that does not fit its PDU
                return
            values.append((body[position + 4], body[position + 5 : end]))
            position = end
        self._idle_timer.restart()
        if responses.deliver_store_response(self.assoc, values):
            if _held(self.assoc):
                return  # for the sender waiting on the DIMSE queue, not the reactor
        else:
            self.assoc.dimse.receive_primitive(primitive)
        self.wake_association.set()

    def _send_encoded(self) -> bool:
        """Write the next queued EncodedPData straight to the socket; False if not one."""
        try:
            head = self.to_provider_queue.queue[0]
        except IndexError:
            return False
        if not isinstance(head, EncodedPData):
            return False
        self.to_provider_queue.get(block=False)
        with self._room:
            self._room.notify_all()
        raw = getattr(self.socket, "socket", None)
        if self.state_machine.current_state != "Sta6" or raw is None:
            log.debug("association no longer established: %d bytes not sent", len(head))
            return True
        try:
            send_buffers(raw, head.buffers)
        except OSError:
            self.event_queue.put("Evt17")  # as pynetdicom's socket does: connection closed
        return True

    def _act(self) -> bool:
        """Run the state machine on every queued event; wake the association if any."""
        acted = False
        while True:
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                break
            if event == "Evt17" and self.state_machine.current_state == "Sta1":
                continue  # AR-3 closed the socket after a release: its own close, not news
            self.state_machine.do_action(event)
            acted = True
        if acted:
            self.wake_association.set()
            with self._room:
                self._room.notify_all()
        return acted

    def _wait(self) -> None:
        """Block until the socket is readable, a primitive is queued, or a timer is due."""
        timeout = min(self._idle_timer.remaining, self.artim_timer.remaining, MAX_WAIT)
        watched: list[Any] = [self._wake_in]
        raw = getattr(self.socket, "socket", None)
        if raw is not None and raw.fileno() >= 0:
            if isinstance(raw, ssl.SSLSocket) and raw.pending():
                return  # decrypted bytes that select cannot see
            watched.append(raw)
        readable: list[Any] = [self._wake_in]  # if select fails, drain the wake-ups anyway
        with contextlib.suppress(OSError, ValueError):  # closed meanwhile: the turn sees it
            readable = select.select(watched, [], [], max(MIN_WAIT, timeout))[0]
        if self._wake_in in readable:  # a failed recv per wait cost more than the wait
            with contextlib.suppress(OSError):
                while self._wake_in.recv(4096):
                    pass

    def _abort_on(self, exc: Exception) -> None:
        """Bad input broke the DUL: answer the peer (reject or abort) and close, at once.

        pynetdicom sent an A-ABORT and left the socket open, and an acceptor still waiting
        for the request waited out the ACSE timeout.
        """
        log.warning("dropped the connection: bad input (%s)", exc)
        log.debug("the DUL failed with", exc_info=exc)
        requested = getattr(self.assoc.requestor, "primitive", None) is not None
        answer = ABORT if self.assoc.is_established or requested else ASSOCIATE_RJ
        raw = getattr(self.socket, "socket", None)
        with contextlib.suppress(Exception):
            if isinstance(raw, socket.socket):
                raw.sendall(answer)
                raw.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(Exception):
            if self.socket is not None:
                self.socket.close()
        self.assoc.is_aborted = True
        self.assoc.is_established = False
        self.assoc._kill = True
        self._kill_thread = True
        waiting: Any = self.to_user_queue  # None is read there as "no request came"
        waiting.put(None)  # so an acceptor waiting for the request stops waiting

