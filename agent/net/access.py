"""Who may talk to us, and for what: decided once per association, checked per request.

With a config file only listed peers get in, from their configured host unless
``verify_host = false``; the built-in default also lets unknown AEs echo and store.
Every request is judged again by the live configuration (``recheck``), so a reload that
takes a right away takes it from associations already open.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Iterable
from dataclasses import dataclass, replace

from agent.config import Config, Peer
from agent.dicom.contexts import service_of

log = logging.getLogger(__name__)

# A-ASSOCIATE-RJ: result, source and reason (PS3.8 9.3.4)
REJECTED_PERMANENT = 0x01
SERVICE_USER = 0x01
CALLING_AE_NOT_RECOGNISED = 0x03
CALLED_AE_NOT_RECOGNISED = 0x07
# the DIMSE status of a request the caller has no right to (PS3.7 Annex C, "Refused: Not
# Authorized"): C-ECHO, C-STORE, C-FIND, C-MOVE and C-GET alike


SERVICE_WORDS = {
    "echo": "C-ECHO",
    "store": "C-STORE",
    "find": "C-FIND",
    "move": "C-MOVE",
    "get": "C-GET",
    "commit": "storage commitment",
    "mpps": "MPPS (N-CREATE/N-SET)",
}


@dataclass(frozen=True)
class Caller:
    """An admitted association's peer and what it may do."""

    ae_title: str
    address: str
    peer: Peer | None
    allowed: frozenset[str]

    def may(self, service: str) -> bool:
        """True if this caller may use ``service`` (echo, store, find, move, get, commit, mpps)."""
        return service in self.allowed

    def __str__(self) -> str:
        name = f"peers.{self.peer.name}" if self.peer else "unknown peer"
        return f"{self.ae_title} ({name}) at {self.address}"


@dataclass(frozen=True)
class Refusal:
    """Why an association is rejected, as the A-ASSOCIATE-RJ reason and a log line."""

    reason: int
    message: str
    kind: str  # one word for the metrics: called-ae, unknown-ae, wrong-host, tls-only


def admit(
    config: Config, calling_ae: str, called_ae: str, address: str, *, over_tls: bool = False
) -> Caller | Refusal:
    """Decide whether an association request gets in (a ``tls`` peer: over TLS only)."""
    calling_ae, called_ae = calling_ae.strip(), called_ae.strip()
    if called_ae != config.agent.ae_title:
        return Refusal(
            CALLED_AE_NOT_RECOGNISED,
            f"{calling_ae} at {address} called {called_ae!r}, we are {config.agent.ae_title!r}",
            "called-ae",
        )
    peer = config.peer_by_ae(calling_ae)
    if peer is None:
        if config.agent.allow_unknown:
            return Caller(calling_ae, address, None, config.agent.allow_unknown)
        return Refusal(
            CALLING_AE_NOT_RECOGNISED, f"unknown calling AE {calling_ae!r} at {address}",
            "unknown-ae",
        )
    if peer.verify_host and not host_matches(peer.host, address):
        return Refusal(
            CALLING_AE_NOT_RECOGNISED,
            f"{calling_ae} connected from {address}, but peers.{peer.name}.host is {peer.host}",
            "wrong-host",
        )
    if peer.tls and not over_tls:
        return Refusal(
            CALLING_AE_NOT_RECOGNISED,
            f"{calling_ae} at {address} came in on the plain port, but peers.{peer.name}.tls"
            " = true: it may only come in over TLS",
            "tls-only",
        )
    return Caller(calling_ae, address, peer, peer.allow)


def refused_services(abstract_syntaxes: Iterable[str], allowed: frozenset[str]) -> list[str]:
    """The services, in words, of proposed presentation contexts that are not offered
    because the caller may not use them (its C-FIND then fails with "no presentation
    context" at the caller's end: the agent logs the refusal as any other)."""
    services = {service_of(syntax) for syntax in abstract_syntaxes}
    return sorted(SERVICE_WORDS[service] for service in services - allowed)


def recheck(config: Config, admitted: Caller) -> Caller:
    """The admitted caller as the live configuration sees it now: an unknown AE's rights
    if it is no longer a peer, none if it is no longer at its host (resolved again only
    if the configured host changed)."""
    peer = config.peer_by_ae(admitted.ae_title)
    if peer is None:
        return replace(admitted, peer=None, allowed=config.agent.allow_unknown)
    same_host = admitted.peer is not None and admitted.peer.host == peer.host
    checked = same_host and admitted.peer is not None and admitted.peer.verify_host
    if peer.verify_host and not checked and not host_matches(peer.host, admitted.address):
        return replace(admitted, peer=peer, allowed=frozenset())
    return replace(admitted, peer=peer, allowed=peer.allow)


def host_matches(configured: str, address: str) -> bool:
    """True if ``address`` is (one of the addresses of) the configured host."""
    remote = _normalise(address)
    try:
        infos = socket.getaddrinfo(configured, None, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        log.warning("cannot resolve %s: %s", configured, exc)
        return False
    return any(_normalise(str(info[4][0])) == remote for info in infos)


def _normalise(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)
