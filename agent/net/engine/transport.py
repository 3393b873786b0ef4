"""TCP tuning for every socket the agent owns.

Without TCP_NODELAY a sender's small trailing segment waits for the receiver's delayed
ACK: about 40 ms per C-STORE, whatever the hardware. We set TCP_NODELAY on our sockets
and, on accepted ones, re-arm TCP_QUICKACK after each PDU read, so that even a sender
that leaves Nagle on (stock DCMTK) is never held back by our ACKs. Accepted sockets also
get a timeout, and a PDU length is checked before anything is allocated for it.

Until its association is established, an accepted connection has ``handshake_timeout``
seconds in all (not per read) to ask for it; pynetdicom's own wait for the request and
its ARTIM timer get the same bound, so a silent or dribbling connection is closed then.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from pynetdicom import evt
from pynetdicom.ae import ApplicationEntity
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from agent.net import peerlog
from agent.net.engine import guards, messages
from agent.net.engine.handshake import HandshakeRefused, accept_tls, peer_subject

log = logging.getLogger(__name__)

_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)
PDU_SLACK = 1024
UNLIMITED_PDU_BOUND = 64 * 1048576


def set_nodelay(sock: socket.socket) -> None:
    """Turn Nagle's algorithm off."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:  # not TCP (a test's socketpair), or already closed
        log.debug("cannot set TCP_NODELAY: %s", exc)


def rearm_quickack(sock: socket.socket) -> None:
    """Ask Linux to ACK at once again (it falls back to delayed ACKs by itself)."""
    if _QUICKACK is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)


class TunedAssociationSocket(AssociationSocket):
    """pynetdicom's socket wrapper with bounded, fast reads that re-arm TCP_QUICKACK."""

    # set on accepted sockets: the moment by which the association must be established,
    # and how long any one read may take from then on (network_timeout)
    handshake_deadline: float | None = None
    stall_timeout: float | None = None

    def recv(self, nr_bytes: int) -> bytearray:
        """Read exactly ``nr_bytes`` (fewer only if the peer closed) before the deadline."""
        limit = self._read_limit()
        if nr_bytes > limit:
            raise OSError(f"peer announced a {nr_bytes}-byte PDU; our limit is {limit}")
        sock = self.socket
        assert sock is not None
        deadline = self._deadline()
        buffer = bytearray(nr_bytes)
        with memoryview(buffer) as view:
            got = 0
            while got < nr_bytes:
                if deadline is not None:
                    sock.settimeout(_remaining(deadline))
                count = sock.recv_into(view[got:], nr_bytes - got)
                if count == 0:
                    break
                got += count
        rearm_quickack(sock)
        if got < nr_bytes:
            del buffer[got:]
        return buffer

    def _deadline(self) -> float | None:
        """Before establishment the whole handshake is bounded; afterwards each read.

        Bounding the whole read, not each chunk, stops a peer that dribbles a byte at a
        time from holding its thread (and our shutdown) for ever.
        """
        if self.handshake_deadline is not None and not self.assoc.is_established:
            return self.handshake_deadline
        if self.stall_timeout is None:
            return None
        return time.monotonic() + self.stall_timeout

    def _read_limit(self) -> int:
        maximum = int(self.assoc.ae.maximum_pdu_size or 0)
        return UNLIMITED_PDU_BOUND if maximum == 0 else maximum + PDU_SLACK


class TunedRequestHandler(RequestHandler):
    """Accept handler: tunes the socket, runs the association, then cleans up after it.

    ``after_association`` runs however the association ended (release, abort, timeout,
    or an exception inside pynetdicom that bypasses its own events).
    """

    network_timeout: float | None = 60.0
    handshake_timeout: float = 5.0
    after_association: Callable[[Any], None] | None = None
    # a TLS listener's: the current server context, and how long its handshake may take
    tls_context: Callable[[], ssl.SSLContext] | None = None
    tls_timeout: float = 5.0

    def _create_association(self) -> Association:
        """pynetdicom's acceptor, with our socket, timeouts, log tags and thread guards."""
        sock = self.request
        assert isinstance(sock, socket.socket)
        set_nodelay(sock)
        rearm_quickack(sock)
        sock.settimeout(self.handshake_timeout)
        assoc = super()._create_association()
        wrapper = assoc.dul.socket
        assert isinstance(wrapper, AssociationSocket)
        wrapper.__class__ = TunedAssociationSocket
        assert isinstance(wrapper, TunedAssociationSocket)
        wrapper.handshake_deadline = time.monotonic() + self.handshake_timeout
        wrapper.stall_timeout = self.network_timeout
        assoc.acse_timeout = self.handshake_timeout  # the wait for the request, and ARTIM
        peer = guards.host_of(self.client_address)
        for thread in (threading.current_thread(), assoc, assoc.dul):
            peerlog.tag_thread(thread, peer)
        guards.guard_threads(assoc, peer)
        self._association = assoc
        return assoc

    def handle(self) -> None:
        """TLS handshake if ours, then the association (pynetdicom), waited for here."""
        try:
            try:
                if self._secure():
                    super().handle()
            finally:  # the server counts this connection by its thread from now on
                started = getattr(self.server, "connection_started", None)
                if started is not None:
                    started(self.client_address)
            association = getattr(self, "_association", None)
            if association is not None:
                association.join()
        finally:
            if self.after_association is not None:
                self.after_association(getattr(self, "_association", None))


    def _secure(self) -> bool:
        """On a TLS listener, complete the handshake; False (logged, closed) if it fails."""
        if self.tls_context is None:
            return True
        sock = self.request
        assert isinstance(sock, socket.socket)
        peer = guards.host_of(self.client_address)
        peerlog.tag_thread(threading.current_thread(), peer)
        where = f"{peer}:{guards.port_of(self.client_address)}"
        try:
            self.request = accept_tls(sock, self.tls_context(), self.tls_timeout)
        except HandshakeRefused as exc:
            with peerlog.speaking_of(peer):
                log.warning("refused a TLS connection from %s: %s", where, exc)
            return False
        subject = peer_subject(self.request)
        log.debug("TLS from %s: %s, %s", where, subject or "no certificate", self.request.version())
        return True


def _remaining(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("the peer took too long to send what it announced")
    return remaining


def request_handler(
    network_timeout: float,
    handshake_timeout: float,
    after_association: Callable[[Any], None],
    tls: tuple[Callable[[], ssl.SSLContext], float] | None = None,
) -> type[TunedRequestHandler]:
    """A request handler class bound to this server's timeouts and clean-up.

    ``tls``: (the current server context, the TLS handshake timeout) for a TLS listener.
    """
    attributes: dict[str, Any] = {
        "network_timeout": network_timeout,
        "handshake_timeout": handshake_timeout,
        "after_association": staticmethod(after_association),
    }
    if tls is not None:
        attributes["tls_context"] = staticmethod(tls[0])
        attributes["tls_timeout"] = tls[1]
    return type("BoundRequestHandler", (TunedRequestHandler,), attributes)


def on_connection_open(event: Event) -> None:
    """EVT_CONN_OPEN handler for associations we request: the same tuning as accepted ones.

    QUICKACK matters here too: a peer that leaves Nagle on holds each small response
    until we ACK the previous one.
    """
    wrapper = getattr(event.assoc.dul, "socket", None)
    sock = getattr(wrapper, "socket", None)
    if isinstance(sock, socket.socket) and isinstance(wrapper, AssociationSocket):
        set_nodelay(sock)
        rearm_quickack(sock)
        wrapper.__class__ = TunedAssociationSocket


def end_if_never_requested(event: Any) -> None:
    """EVT_CONN_CLOSE: a connection that closed before asking for an association ends now.

    A port probe or a load balancer's health check connects and hangs up at once;
    pynetdicom's acceptor would otherwise hold its thread for the whole ACSE timeout,
    and the server's shutdown would wait for it.
    """
    assoc = event.assoc
    if assoc.is_acceptor and assoc.requestor.primitive is None:
        assoc.dul.to_user_queue.put(None)  # read as "no request came": the reactor ends


def requestor_handlers() -> list[Any]:
    """Event handlers for the associations the agent requests (to send, find or retrieve)."""
    return [
        (evt.EVT_CONN_OPEN, on_connection_open),
        (evt.EVT_ESTABLISHED, messages.abort_if_unanswerable),
    ]


def unread_rejection(assoc: Association) -> A_ASSOCIATE | None:
    """An A-ASSOCIATE-RJ the requesting thread never read from the DUL's queue, if any."""
    waiting = getattr(assoc.dul, "to_user_queue", None)
    while waiting is not None and not waiting.empty():
        primitive = waiting.get_nowait()
        if isinstance(primitive, A_ASSOCIATE) and primitive.result in (0x01, 0x02):
            return primitive
    return None


def over_tls(assoc: Association) -> bool:
    """True if this association's connection is a TLS one."""
    wrapper = getattr(assoc.dul, "socket", None)
    return isinstance(getattr(wrapper, "socket", None), ssl.SSLSocket)


def register_server(ae: ApplicationEntity, server: ThreadedAssociationServer) -> None:
    """Let ``AE.shutdown()`` stop a server we built ourselves, as it stops its own."""
    ae._servers.append(server)
