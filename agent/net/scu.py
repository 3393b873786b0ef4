"""Associations we request: resolving a target, and C-ECHO.

Rejections and failures come back as PeerError with the reason in words, since the
person reading them is usually a field engineer with a cable and a deadline.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pynetdicom import AE

from agent.config import Config
from agent.dicom.contexts import UNCOMPRESSED, VERIFICATION
from agent.errors import ConfigError, PeerError
from agent.net import configure_pynetdicom
from agent.net.engine.transport import requestor_handlers, unread_rejection

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


def new_ae(config: Config, *, timeout: float | None = None) -> AE:
    """An AE for requesting associations, with our AE title and speed settings.

    ``timeout`` bounds connecting, the association request and each answer awaited.
    """
    configure_pynetdicom(debug=config.agent.log_level == "debug", quiet=True)
    ae = AE(ae_title=config.agent.ae_title)
    ae.maximum_pdu_size = config.agent.max_pdu
    ae.network_timeout = config.agent.network_timeout
    ae.connection_timeout = timeout or ACSE_TIMEOUT
    ae.acse_timeout = timeout or ACSE_TIMEOUT
    ae.dimse_timeout = timeout or DIMSE_TIMEOUT
    return ae


def associate(
    ae: AE, target: Target, *, ext_neg: list[Any] | None = None, extra_handlers: Sequence[Any] = ()
) -> Any:
    """Open an association with Nagle off, or raise PeerError with the reason in words."""
    assoc = ae.associate(
        target.host,
        target.port,
        ae_title=target.ae_title,
        ext_neg=ext_neg or None,
        evt_handlers=[*requestor_handlers(), *extra_handlers],
    )
    if assoc.is_established:
        return assoc
    rejection = rejection_of(assoc)
    if rejection is not None:
        raise PeerError(f"{target}: {describe_rejection(rejection)}")
    reason = probe(target, min(float(ae.acse_timeout or PROBE_TIMEOUT), PROBE_TIMEOUT))
    raise PeerError(f"{target}: {reason}")


def rejection_of(assoc: Any) -> Any | None:
    """The A-ASSOCIATE-RJ that turned this association down, if one came.

    pynetdicom 3.0 misses a rejection that arrives, and closes the connection, before
    its requesting thread looks at the socket (a busy machine, a fast peer such as
    dcmqrscp): it then reports an abort, and the reject waits unread in its queue.
    """
    if assoc.is_rejected:
        return assoc.acceptor.primitive
    return unread_rejection(assoc)


def probe(target: Target, timeout: float) -> str:
    """Why no association came up, found by trying a plain TCP connection."""
    where = f"{target.host}:{target.port}"
    try:
        with socket.create_connection((target.host, target.port), timeout=timeout):
            pass
    except ConnectionRefusedError:
        return f"connection refused: nothing listens on {where} (agent stopped? wrong port?)"
    except TimeoutError:
        return f"{where} did not answer within {timeout:g} s (host down, firewall, wrong address?)"
    except OSError as exc:
        return f"cannot reach {where}: {exc.strerror or exc}"
    return (
        f"{where} accepts connections but gave no association answer within {timeout:g} s "
        "(not a DICOM port, or the peer is overloaded)"
    )


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
    ae = new_ae(config)
    ae.add_requested_context(VERIFICATION, list(UNCOMPRESSED))
    started = time.monotonic()
    assoc = associate(ae, target)
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
