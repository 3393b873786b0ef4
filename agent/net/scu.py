"""Associations we request: resolving a target, and C-ECHO.

Rejections and failures come back as PeerError with the reason in words, since the
person reading them is usually a field engineer with a cable and a deadline.
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pynetdicom import AE

from agent import tls
from agent.config import Config, Peer
from agent.dicom.contexts import UNCOMPRESSED, VERIFICATION
from agent.errors import ConfigError, PeerError
from agent.net import prepare_pynetdicom
from agent.net.engine.handshake import describe
from agent.net.engine.transport import requestor_handlers, unread_rejection

log = logging.getLogger(__name__)

_TARGET = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>[^:@]+|\[[0-9A-Fa-f:.]+\]):(?P<port>\d{1,5})$")

ACSE_TIMEOUT = 30.0
DIMSE_TIMEOUT = 60.0
PROBE_TIMEOUT = 5.0
_REJECT_REASONS = {
    (1, 1): "no reason given",
    (1, 2): "application context name not supported",
    (1, 3): "calling AE title not recognised (they do not know our AE title)",
    (1, 7): "called AE title not recognised (wrong AE title for them)",
    (2, 1): "no reason given",
    (2, 2): "protocol version not supported",
    (3, 1): "temporary congestion",
    (3, 2): "local limit exceeded (too many associations)",
}


@dataclass(frozen=True)
class Target:
    """Where to connect: a configured peer's name or an ad-hoc AET@HOST:PORT."""

    ae_title: str
    host: str
    port: int
    name: str

    def __str__(self) -> str:
        address = f"{self.ae_title}@{self.host}:{self.port}"
        return address if self.name == address else f"{self.name} ({address})"


def resolve_target(config: Config, spec: str) -> Target:
    """A peer name from the config, or ``AET@HOST:PORT``; ConfigError otherwise."""
    peer = config.peers.get(spec)
    if peer is not None and peer.web is not None:
        raise ConfigError(f"peers.{spec}.kind", "is \"dicomweb\": a DICOMweb destination has"
                          " no DICOM address for C-ECHO, C-FIND, C-MOVE or C-GET")
    if peer is not None:
        return Target(peer.ae_title, peer.host, peer.port, peer.name)
    match = _TARGET.match(spec)
    if match is None:
        known = ", ".join(sorted(config.peers)) or "none configured"
        raise ConfigError("", f"{spec!r} is neither a configured peer ({known}) nor AET@HOST:PORT")
    port = int(match["port"])
    if not 1 <= port <= 65535:
        raise ConfigError("", f"port {port} is out of range")
    return Target(match["ae"], match["host"].strip("[]"), port, spec)


@dataclass(frozen=True)
class Requestor:
    """Our side of the associations we request, from one configuration in plain sight:
    the AE title and speed settings its AEs get, and which targets need TLS.

    ``timeout`` bounds connecting, the association request and each answer awaited.
    """

    config: Config
    timeout: float | None = None

    def ae(self) -> AE:
        """An AE for requesting associations, with our AE title and speed settings."""
        prepare_pynetdicom()  # logging is the process owner's: nothing muted here
        ae = AE(ae_title=self.config.agent.ae_title)
        ae.maximum_pdu_size = self.config.agent.max_pdu
        ae.network_timeout = self.config.agent.network_timeout
        ae.connection_timeout = self.timeout or ACSE_TIMEOUT
        ae.acse_timeout = self.timeout or ACSE_TIMEOUT
        ae.dimse_timeout = self.timeout or DIMSE_TIMEOUT
        return ae

    def associate(
        self,
        ae: AE,
        target: Target,
        *,
        ext_neg: list[Any] | None = None,
        extra_handlers: Sequence[Any] = (),
    ) -> Any:
        """Open an association with Nagle off, or raise PeerError with the reason in words.

        A target that is a peer with ``tls = true`` is reached over TLS, whoever asks:
        forwarding, echo, find or retrieve.
        """
        secure = tls_args(self.config, peer_of(self.config, target))
        assoc = ae.associate(
            target.host,
            target.port,
            ae_title=target.ae_title,
            ext_neg=ext_neg or None,
            evt_handlers=[*requestor_handlers(), *extra_handlers],
            tls_args=secure,
        )
        if assoc.is_established:
            return assoc
        timeout = min(float(ae.acse_timeout or PROBE_TIMEOUT), PROBE_TIMEOUT)
        raise PeerError(f"{target}: {why_not_established(assoc, target, secure, timeout)}")


def peer_of(config: Config, target: Target) -> Peer | None:
    """The configured peer a target is: by name, else by AE title, host and port."""
    address = (target.ae_title, target.host, target.port)
    named = config.peers.get(target.name)
    candidates = [named] if named is not None else list(config.peers.values())
    for peer in candidates:
        if peer is not None and (peer.ae_title, peer.host, peer.port) == address:
            return peer
    return None


def tls_args(config: Config, peer: Peer | None) -> tuple[ssl.SSLContext, str] | None:
    """pynetdicom's ``tls_args`` for associations to ``peer``: None unless ``tls = true``.

    Our certificate is presented as the client's; the peer's is verified against
    ``[tls].ca`` and, with ``verify_name``, must name ``host`` (DNS or IP SAN).
    """
    if peer is None or not peer.tls:
        return None
    if config.tls is None:
        raise PeerError(f"peers.{peer.name}.tls = true, but there is no [tls] table")
    try:
        contexts = tls.CACHE.get(config.tls)
    except ConfigError as exc:
        raise PeerError(f"{peer.name}: cannot use TLS: {exc}") from None
    context = contexts.client if peer.verify_name else contexts.client_unnamed
    return context, peer.host


def why_not_established(
    assoc: Any, target: Target, secure: tuple[ssl.SSLContext, str] | None, timeout: float
) -> str:
    """In words, why an association we asked for did not come up (a connection that
    failed is probed, for at most ``timeout`` seconds, to say why)."""
    rejection = rejection_of(assoc)
    if rejection is not None:
        return describe_rejection(rejection)
    refused = refused_contexts(assoc)
    if refused is not None:
        return refused
    reason = probe(target, timeout) if secure is None else probe_tls(target, secure, timeout)
    if secure is not None:  # the caller reports the PeerError (forwarding: once per outage)
        log.debug("TLS association to %s failed: %s", target, reason)
    return reason


def rejection_of(assoc: Any) -> Any | None:
    """The A-ASSOCIATE-RJ that turned this association down, if one came.

    pynetdicom 3.0 misses a rejection that arrives, and closes the connection, before
    its requesting thread looks at the socket (a busy machine, a fast peer such as
    dcmqrscp): it then reports an abort, and the reject waits unread in its queue.
    """
    if assoc.is_rejected:
        return assoc.acceptor.primitive
    return unread_rejection(assoc)


def refused_contexts(assoc: Any) -> str | None:
    """In words, if the peer accepted the association but none of the presentation
    contexts proposed (pynetdicom then aborts it): the services it will not give us."""
    answer = assoc.acceptor.primitive
    if answer is None or answer.result != 0 or assoc.accepted_contexts:
        return None
    names = sorted({str(cx.abstract_syntax.name) for cx in assoc.rejected_contexts})
    return (
        "the peer accepted the association but refused every presentation context proposed"
        f" ({', '.join(names) or 'none'}): it does not offer that service to our AE title"
    )


def probe(target: Target, timeout: float) -> str:
    """Why no association came up, found by trying a plain TCP connection."""
    where = f"{target.host}:{target.port}"
    try:
        with socket.create_connection((target.host, target.port), timeout=timeout):
            pass
    except ConnectionRefusedError:
        return f"connection refused: nothing listens on {where} (not running? wrong port?)"
    except TimeoutError:
        return f"{where} did not answer within {timeout:g} s (host down, firewall, wrong address?)"
    except OSError as exc:
        return f"cannot reach {where}: {exc.strerror or exc}"
    return (
        f"{where} accepts connections but gave no association answer within {timeout:g} s "
        "(not a DICOM port, or the peer is overloaded)"
    )


def probe_tls(target: Target, secure: tuple[ssl.SSLContext, str], timeout: float) -> str:
    """Why no TLS association came up, found by trying the TLS handshake alone."""
    reason = probe(target, timeout)
    if not reason.startswith(f"{target.host}:{target.port} accepts connections"):
        return reason
    context, hostname = secure
    try:
        with (
            socket.create_connection((target.host, target.port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=hostname),
        ):
            pass
    except ssl.SSLCertVerificationError as exc:
        if "mismatch" in str(exc.verify_message):
            return f"TLS refused: its certificate does not name {hostname} ({exc.verify_message})"
        return f"TLS refused: its certificate was not accepted ({exc.verify_message})"
    except ssl.SSLError as exc:
        return f"TLS handshake failed: {describe(exc)}"
    except OSError as exc:
        return f"TLS handshake failed: {exc}"
    return f"TLS works, but {reason.split(' but ', 1)[-1]}"


def describe_rejection(primitive: Any) -> str:
    """An A-ASSOCIATE-RJ in words."""
    kind = "permanently" if primitive.result == 1 else "for now (transient)"
    reason = _REJECT_REASONS.get(
        (primitive.result_source, primitive.diagnostic),
        f"source {primitive.result_source}, reason {primitive.diagnostic}",
    )
    return f"association rejected {kind}: {reason}"


def echo(config: Config, target: Target) -> float:
    """C-ECHO the target; return the round trip in seconds or raise PeerError."""
    requestor = Requestor(config)
    ae = requestor.ae()
    ae.add_requested_context(VERIFICATION, list(UNCOMPRESSED))
    started = time.monotonic()
    assoc = requestor.associate(ae, target)
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    elapsed = time.monotonic() - started
    if not status or "Status" not in status:
        raise PeerError(f"{target}: no C-ECHO response")
    if status.Status != 0:
        raise PeerError(f"{target}: C-ECHO answered 0x{status.Status:04X}")
    return elapsed
