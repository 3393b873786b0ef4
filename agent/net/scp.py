"""The agent's DICOM listener: one pynetdicom AE, access control at association time,
and the service handlers. Owns its listening thread; ``close()`` stops it.
"""

from __future__ import annotations

import logging
import ssl
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.transport import ThreadedAssociationServer

from agent import threads, tls
from agent.archive import Archive
from agent.archive.retrieval import Reader
from agent.config import Config
from agent.dicom.contexts import (
    MPPS,
    QR_SOP_CLASSES,
    STORAGE_COMMITMENT,
    STORAGE_SOP_CLASSES,
    STORAGE_TRANSFER_SYNTAXES,
    UNCOMPRESSED,
    VERIFICATION,
    preferring,
    service_of,
)
from agent.errors import IndexUnavailable
from agent.net import configure_pynetdicom, peerlog
from agent.net.access import (
    REJECTED_PERMANENT,
    SERVICE_USER,
    Caller,
    Refusal,
    admit,
    recheck,
    refused_services,
)
from agent.net.commit_reports import CommitReports
from agent.net.commit_scp import CommitmentHandler, offered_commitment
from agent.net.engine import guards, messages, transport
from agent.net.engine.moves import ListenerAE
from agent.net.fallthrough_port import FallThrough
from agent.net.mpps_scp import FinalCallback, MppsHandler
from agent.net.qr import QueryRetrieveHandlers
from agent.net.storage import StorageHandlers
from agent.status import StatusModel

log = logging.getLogger(__name__)

ACSE_TIMEOUT = 30.0
DIMSE_TIMEOUT = 60.0
# A-ASSOCIATE-RJ "local limit exceeded": transient, service provider (presentation), reason 2
REJECTED_TRANSIENT, SERVICE_PROVIDER_PRESENTATION, LOCAL_LIMIT_EXCEEDED = 2, 3, 2
NO_REASON_GIVEN = 1  # with transient and service user: our own failure to decide
SERVICE_PROVIDER_ACSE = 2  # with permanent and no reason given: a parameter we cannot serve
GRACE = 10.0  # seconds for running associations to finish when the agent stops
LISTENER_STOPS_WITHIN = 5.0
ABORTED_END_WITHIN = 2.0  # for aborted associations' threads to end, once the listener has


class DicomServer:
    """Listens for associations; serves Verification, Storage, Query/Retrieve, Storage
    Commitment and MPPS (``on_mpps_final`` hears of each step that becomes final)."""

    def __init__(
        self,
        current: Callable[[], Config],
        archive: Archive,
        status: StatusModel,
        on_commitment: Callable[[], None] = lambda: None,
        on_mpps_final: FinalCallback | None = None,
        on_mpps_queued: Callable[[], None] = lambda: None,
        fall_through: FallThrough | None = None,
    ) -> None:
        self.current = current  # the configuration in force: admission reads it per request
        config = current()  # the listeners are built from the configuration at start
        self.archive = archive
        self.status = status
        self._callers: weakref.WeakKeyDictionary[Any, Caller] = weakref.WeakKeyDictionary()
        self._storage = StorageHandlers(archive, status, self.caller_now)
        self._reader = Reader(archive.layout, config.agent.ae_title)
        self._qr = QueryRetrieveHandlers(
            current, self._reader, self.caller_now, status.timings.cfind.observe, fall_through
        )
        self._reports = CommitReports(archive.pacs_commits, self.caller_now)
        self._commitment = CommitmentHandler(archive, self.caller_now, on_commitment)
        self._mpps = MppsHandler(
            archive,
            self.caller_now,
            on_mpps_final,
            mpps_to=lambda: self.current().forward.mpps_to,
            wake=on_mpps_queued,
        )
        self._ae = self._build_ae()
        # ConfigError (naming the key) here stops start-up: unusable certificate or key
        self._tls = tls.load(config.tls) if config.tls is not None else None
        self._server: ThreadedAssociationServer | None = None
        self._tls_server: ThreadedAssociationServer | None = None
        self._threads: list[threading.Thread] = []
        self._ended = threading.Condition()
        self._ended_count = 0

    def _build_ae(self) -> AE:
        settings = self.current().agent
        configure_pynetdicom(debug=settings.log_level == "debug")
        ae = ListenerAE(ae_title=settings.ae_title)  # a C-MOVE's unreachable destination: 0xA702
        ae.maximum_pdu_size = settings.max_pdu
        ae.network_timeout = settings.network_timeout
        ae.acse_timeout = ACSE_TIMEOUT
        ae.dimse_timeout = DIMSE_TIMEOUT
        # we count only connections that asked for an association (see _on_requested);
        # pynetdicom counts every connection, so its own limit is set out of the way
        ae.maximum_associations = settings.max_associations + 2 * guards.PENDING_LIMIT
        ae.add_supported_context(VERIFICATION, list(UNCOMPRESSED))
        for sop_class in QR_SOP_CLASSES:
            ae.add_supported_context(sop_class, list(UNCOMPRESSED))
        for sop_class in STORAGE_SOP_CLASSES:  # both roles: C-GET sends us the SCP role
            ae.add_supported_context(
                sop_class, list(STORAGE_TRANSFER_SYNTAXES), scu_role=True, scp_role=True
            )
        # both roles: a modality asks us (SCU), a PACS reports to us (proposes SCP role)
        ae.add_supported_context(
            STORAGE_COMMITMENT, list(UNCOMPRESSED), scu_role=True, scp_role=True
        )
        ae.add_supported_context(MPPS, list(UNCOMPRESSED))  # offered to peers allowed "mpps"
        return ae

    @property
    def port(self) -> int:
        """The bound plain port (useful when the config asked for port 0)."""
        if self._server is None:
            raise RuntimeError("no plain listener running")
        return int(self._server.server_address[1])

    @property
    def tls_port(self) -> int:
        """The bound TLS port."""
        if self._tls_server is None:
            raise RuntimeError("no TLS listener running")
        return int(self._tls_server.server_address[1])

    @property
    def certificate_expires(self) -> str | None:
        """When the certificate in use expires (ISO 8601, UTC), if TLS is configured."""
        return None if self._tls is None else self._tls.not_after.isoformat()

    def start(self) -> None:
        """Bind the listeners (plain, TLS, or both) and serve each in a background thread."""
        settings = self.current().agent
        # pynetdicom streams incoming data sets to NamedTemporaryFile: keep those on the
        # archive's filesystem so that ingest is a rename, never a copy.
        tempfile.tempdir = str(self.archive.layout.tmp_dir)
        if settings.plain_listener:
            self._server = self._serve(settings.port, None)
        secured = self.current().tls
        if secured is not None:
            self._tls_server = self._serve(secured.port, secured.handshake_timeout)
        plain = self.port if self._server is not None else None
        secure = self.tls_port if self._tls_server is not None else None
        self.status.set_listening(settings.bind, plain, secure)
        self.status.certificate(self.certificate_expires)
        log.info("listening as %s on %s", settings.ae_title, self.status.snapshot().listening)

    def _serve(self, port: int, tls_timeout: float | None) -> ThreadedAssociationServer:
        """One listener on ``port``, TLS if ``tls_timeout`` is given, in its own thread."""
        settings = self.current().agent
        handlers: list[Any] = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_CONN_CLOSE, transport.end_if_never_requested),
            (evt.EVT_DIMSE_RECV, guards.remember_received),
            (evt.EVT_C_ECHO, self._storage.on_echo),
            (evt.EVT_C_STORE, self._storage.on_store),
            (evt.EVT_C_FIND, self._qr.on_find),
            (evt.EVT_C_MOVE, self._qr.on_move),
            (evt.EVT_C_GET, self._qr.on_get),
            (evt.EVT_SOP_EXTENDED, self._qr.on_sop_extended),
            (evt.EVT_N_EVENT_REPORT, self._reports.on_event_report),
            (evt.EVT_N_ACTION, self._commitment.on_n_action),
            (evt.EVT_N_CREATE, self._mpps.on_n_create),
            (evt.EVT_N_SET, self._mpps.on_n_set),
        ]
        tls_args = None if tls_timeout is None else (self._server_context, tls_timeout)
        server = self._ae.make_server(
            (settings.bind, port),
            evt_handlers=handlers,
            server_class=guards.GuardedAssociationServer,
            request_handler=transport.request_handler(
                settings.network_timeout,
                settings.handshake_timeout,
                after_association=self._after_connection,
                tls=tls_args,
            ),
        )
        if isinstance(server, guards.GuardedAssociationServer):
            server.pending_wait = settings.handshake_timeout + (tls_timeout or 0)
        # a connection's thread can be held by its handler (a C-MOVE waiting up to the
        # DIMSE timeout for a silent destination); as a daemon it holds neither close()
        # (socketserver would join it without a limit) nor the process's exit
        server.daemon_threads = True
        transport.register_server(self._ae, server)
        name = "dicom-listener" if tls_timeout is None else "dicom-tls-listener"
        thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)
        return server

    def _server_context(self) -> ssl.SSLContext:
        """The TLS listener's current context (replaced when a reload renews the files)."""
        assert self._tls is not None
        return self._tls.server

    def serving(self) -> bool:
        """True while every listener socket is open and every listener thread runs."""
        servers = [s for s in (self._server, self._tls_server) if s is not None]
        return (
            bool(servers)
            and all(s.socket is not None and s.socket.fileno() >= 0 for s in servers)
            and bool(self._threads)
            and all(t.is_alive() for t in self._threads)
        )

    def renew_tls(self, contexts: tls.Contexts) -> None:
        """Serve new connections with ``contexts``, the TLS files read again by a reload
        (renewed certificates); the reload decides and says whether they were usable.

        Everything else a reload changes (admission, move destinations) is read per
        request through ``current``; the listeners themselves (AE title, ports, PDU size)
        keep what they were built with.
        """
        if self._tls_server is not None:
            self._tls = contexts
            self.status.certificate(self.certificate_expires)
            log.info("TLS certificate loaded, valid until %s", contexts.not_after.date())

    def active_associations(self) -> int:
        """How many associations are open now (connections that never asked do not count)."""
        return guards.open_associations(self._ae.active_associations)

    def connections_ended(self) -> int:
        """How many accepted connections have ended and been cleaned up after."""
        with self._ended:
            return self._ended_count

    def wait_connections_ended(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` connections in all have ended; False on timeout."""
        with self._ended:
            return self._ended.wait_for(lambda: self._ended_count >= count, timeout)

    def _after_connection(self, assoc: Any) -> None:
        """After every accepted connection, however it ended: clean up, then count it."""
        try:
            self._storage.on_association_end(assoc)
        finally:
            with self._ended:
                self._ended_count += 1
                self._ended.notify_all()

    def close(self, grace: float = GRACE) -> None:
        """Stop accepting, let running associations finish for ``grace`` s, abort the rest."""
        servers = [s for s in (self._server, self._tls_server) if s is not None]
        self._server = self._tls_server = None
        if not servers:
            return
        for server in servers:
            if server.socket is not None:
                server.socket.close()  # new connections are refused from now on
        deadline = time.monotonic() + grace
        while self._ae.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        self._ae.shutdown()
        stop_by = time.monotonic() + LISTENER_STOPS_WITHIN
        for thread in self._threads:
            threads.join(thread, max(0.0, stop_by - time.monotonic()))
        self._report_unfinished(time.monotonic() + ABORTED_END_WITHIN)
        peerlog.LIMITER.flush(everything=True)

    def _report_unfinished(self, deadline: float) -> None:
        """Say which associations' threads did not end after the abort, and leave them."""
        for assoc in list(self._ae.active_associations):
            if not threads.join(assoc, deadline - time.monotonic()):
                caller = self._callers.get(assoc)
                log.error("the association with %s was aborted but its handler goes on", caller)

    def __enter__(self) -> DicomServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def caller_now(self, assoc: Any) -> Caller | None:
        """The association's caller with the rights the live configuration gives it now
        (checked on every request: a reload takes effect on open associations); no rights
        if that cannot be decided. None for an association that was never admitted."""
        admitted = self._callers.get(assoc)
        if admitted is None:
            return None
        try:
            return recheck(self.current(), admitted)
        except Exception:  # fail closed
            log.exception("could not check the rights of %s; refusing its request", admitted)
            return Caller(admitted.ae_title, admitted.address, admitted.peer, frozenset())

    def _on_requested(self, event: Any) -> None:
        """EVT_REQUESTED: admit the association or reject it; reject it on any error, as
        pynetdicom would otherwise accept what was proposed."""
        try:
            self._admit_or_reject(event.assoc)
        except Exception:
            log.exception("could not decide on an association request; rejected")
            self.status.association_rejected("error")
            self._refuse_on_error(event.assoc)

    def _refuse_on_error(self, assoc: Any) -> None:
        """Reject after a failure; should even that fail, nothing stays acceptable."""
        self._callers.pop(assoc, None)
        assoc.acceptor.supported_contexts = []
        try:
            assoc.acse.send_reject(REJECTED_TRANSIENT, SERVICE_USER, NO_REASON_GIVEN)
        finally:
            assoc.kill()

    def _admit_or_reject(self, assoc: Any) -> None:
        """Admit the association (offering only the allowed contexts) or reject it."""
        request = assoc.requestor.primitive
        if self._unanswerable(assoc):
            return
        decision = admit(
            self.current(),
            calling_ae=str(request.calling_ae_title),
            called_ae=str(request.called_ae_title),
            address=str(assoc.requestor.address),
            over_tls=transport.over_tls(assoc),
        )
        if isinstance(decision, Refusal):
            log.warning("rejected association: %s", decision.message)
            self.status.association_rejected(decision.kind)
            assoc.acse.send_reject(REJECTED_PERMANENT, SERVICE_USER, decision.reason)
            assoc.kill()  # as pynetdicom does for its own rejections: waits until it is sent
            return
        limit = self.current().agent.max_associations
        if guards.open_associations(self._ae.active_associations) > limit:
            log.warning(
                "rejected association from %s: max_associations (%d) are open", decision, limit
            )
            self.status.association_rejected("limit")
            assoc.acse.send_reject(
                REJECTED_TRANSIENT, SERVICE_PROVIDER_PRESENTATION, LOCAL_LIMIT_EXCEEDED
            )
            assoc.kill()
            return
        self._callers[assoc] = decision
        # a peer is offered only the services it may use: others see "no such context".
        # C-GET sends its C-STOREs back on storage contexts, so "get" keeps those too;
        # a C-STORE from such a peer is still refused by the handler (0x0124).
        allowed = decision.allowed | ({"store"} if decision.may("get") else set())
        allowed = allowed - {"commit"} | ({"commit"} if offered_commitment(decision) else set())
        if "commit" not in allowed:
            _log_refused_commitment(assoc, decision)
        contexts = [
            cx
            for cx in assoc.acceptor.supported_contexts
            if service_of(str(cx.abstract_syntax)) in allowed
        ]
        proposed = (str(cx.abstract_syntax) for cx in assoc.requestor.requested_contexts)
        for words in refused_services(proposed, frozenset(allowed)):  # limited per peer
            log.warning("refused %s from %s: not allowed (its contexts not accepted)", words,
                        decision)
        if decision.may("get"):
            contexts = self._as_stored_for_get(assoc, contexts)
        assoc.acceptor.supported_contexts = contexts

    def _unanswerable(self, assoc: Any) -> bool:
        """Reject (and say so) a peer whose Maximum Length Received no PDU we send fits."""
        length = messages.unanswerable(assoc)
        if length is None:
            return False
        request = assoc.requestor.primitive
        log.warning(
            "rejected association from %s at %s: it takes P-DATA of at most %d bytes,"
            " fewer than the %d any answer needs",
            str(request.calling_ae_title).strip(),
            assoc.requestor.address,
            length,
            messages.MIN_PEER_PDU,
        )
        self.status.association_rejected("pdu-size")
        assoc.acse.send_reject(REJECTED_PERMANENT, SERVICE_PROVIDER_ACSE, NO_REASON_GIVEN)
        assoc.kill()
        return True

    def _as_stored_for_get(self, assoc: Any, contexts: list[Any]) -> list[Any]:
        """For the SOP classes a C-GET peer will receive, prefer the syntaxes they are stored in.

        A peer proposing several syntaxes in one context (getscu does) then gets files as
        stored. One context carries one syntax: the commonest stored one wins, the peer's
        order breaks ties, and instances stored otherwise are converted if they can be.
        """
        receives = {
            str(uid) for uid, item in assoc.requestor.role_selection.items() if item.scp_role
        }
        try:
            counts = self._reader.stored_syntaxes(receives)
        except IndexUnavailable as exc:
            log.warning("cannot read the stored syntaxes; C-GET keeps the default order: %s", exc)
            return contexts
        first: dict[str, list[str]] = {}
        for cx in assoc.requestor.requested_contexts:
            stored = counts.get(str(cx.abstract_syntax), {})
            offered = [str(s) for s in cx.transfer_syntax if str(s) in stored]
            ranked = sorted(offered, key=lambda s: (-stored[s], offered.index(s)))
            first.setdefault(str(cx.abstract_syntax), ranked)
        return preferring(contexts, first)


def _log_refused_commitment(assoc: Any, caller: Caller) -> None:
    """One warning when a caller without ``commit = true`` proposes to send us storage
    commitment reports (the SCP role): they are refused, and its sender only sees that
    the context was not accepted. (A modality proposing to ask us, as many do on every
    association, is not logged.)"""
    role = assoc.requestor.role_selection.get(STORAGE_COMMITMENT)
    if role is None or not role.scp_role:
        return
    why = (
        f"peers.{caller.peer.name} has no commit = true" if caller.peer is not None
        else "only a configured peer with commit = true may send them"
    )
    log.warning("refused storage commitment reports from %s: %s", caller, why)
