"""The TLS handshake of an accepted connection, in that connection's own thread.

pynetdicom wraps accepted sockets in ``AssociationServer.get_request``, in the accept
thread, so one client that connects and says nothing blocks every other TLS accept.
Our servers get no ``ssl_context``; the request handler wraps the socket itself with
``do_handshake_on_connect=False`` and runs the handshake here, non-blocking against one
deadline for the whole handshake, so that a client dribbling bytes cannot stretch it.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import time
from typing import Any

# OpenSSL's reasons, in the words a field engineer needs
_REASONS = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "it presented no client certificate",
    "CERTIFICATE_REQUIRED": "it presented no client certificate",
    "WRONG_VERSION_NUMBER": "it does not speak TLS (a plain DICOM client on the TLS port?)",
    "HTTP_REQUEST": "it does not speak TLS (plain text on the TLS port)",
    "UNSUPPORTED_PROTOCOL": "it offers only a TLS version below our tls.min_version",
    "NO_PROTOCOLS_AVAILABLE": "it offers only a TLS version below our tls.min_version",
    "TLSV1_ALERT_PROTOCOL_VERSION": "it offers only a TLS version below our tls.min_version",
    "NO_SHARED_CIPHER": "it offers no cipher suite we accept (BCP 195)",
}


class HandshakeRefused(ConnectionError):
    """The TLS handshake failed; the message says why, in words."""


def accept_tls(sock: socket.socket, context: ssl.SSLContext, timeout: float) -> ssl.SSLSocket:
    """Wrap an accepted socket and complete the server handshake within ``timeout`` s.

    Raises HandshakeRefused (the connection is then closed) on any failure.
    """
    try:
        wrapped = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
    except (OSError, ValueError) as exc:
        with contextlib.suppress(OSError):
            sock.close()
        raise HandshakeRefused(f"the connection failed before the TLS handshake ({exc})") from None
    try:
        _complete(wrapped, time.monotonic() + timeout, timeout)
    except HandshakeRefused:
        with contextlib.suppress(OSError):
            wrapped.close()
        raise
    wrapped.setblocking(True)
    return wrapped


def _complete(wrapped: ssl.SSLSocket, deadline: float, timeout: float) -> None:
    wrapped.setblocking(False)
    while True:
        try:
            wrapped.do_handshake()
            return
        except ssl.SSLWantReadError:
            readable, writable = [wrapped], []
        except ssl.SSLWantWriteError:
            readable, writable = [], [wrapped]
        except ssl.SSLError as exc:
            raise HandshakeRefused(describe(exc)) from None
        except OSError as exc:
            message = f"it closed the connection during the TLS handshake ({exc})"
            raise HandshakeRefused(message) from None
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not any(select.select(readable, writable, [], remaining)):
            raise HandshakeRefused(f"it completed no TLS handshake within {timeout:g} s")


def describe(exc: ssl.SSLError) -> str:
    """Why a handshake failed, in words."""
    verify = getattr(exc, "verify_message", None)
    if verify:
        return f"its certificate was not accepted: {verify}"
    reason = str(exc.reason or "")
    if reason in _REASONS:
        return _REASONS[reason]
    if reason.startswith("TLSV1_ALERT_") or reason.startswith("SSLV3_ALERT_"):
        alert = reason.split("ALERT_", 1)[1].replace("_", " ").lower()
        return f"it rejected our certificate or the handshake (alert: {alert})"
    return f"TLS handshake failed ({reason or exc})"


def peer_subject(wrapped: ssl.SSLSocket) -> str:
    """The client certificate's subject as ``CN=..., O=...`` (empty if none)."""
    certificate: Any = wrapped.getpeercert() or {}
    parts = [f"{pair[0]}={pair[1]}" for rdn in certificate.get("subject", ()) for pair in rdn]
    return ", ".join(parts)
