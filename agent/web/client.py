"""One DICOMweb service, as its settings describe it: a ``requests`` session with its
authentication and TLS trust, STOW-RS requests, and a cheap authenticated request for
``edge-agent echo``.

A failure to reach the service at all (no connection, a refused or timed-out connect,
a TLS handshake or certificate that fails) raises PeerError, as an association that
cannot be set up does: the destination is down, not the instances. A failure after the
request went out (the connection dropped mid-way, no answer in time) raises
``SendError``: it counts against the instances, which are tried again.

dicomweb-client (PyPI) is not used: its ``store_instances`` takes pydicom data sets and
re-encodes them (not byte-identical) and builds the whole multipart body in memory.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import requests
from urllib3.exceptions import NewConnectionError

from agent.errors import PeerError
from agent.web.auth import auth_for
from agent.web.settings import WebSettings
from agent.web.stow import ANSWER_TYPE, Part, StowAnswer, StowBody, read_answer

log = logging.getLogger(__name__)

USER_AGENT = "edge-agent (DICOMweb STOW-RS)"
_SSL_REASON = re.compile(r"\[SSL[^\]]*\]\s*([^()'\"]+)")
_ERRNO = re.compile(r"\[Errno -?\d+\]\s*([^)'\"]+)")


class SendError(Exception):
    """The request went out but no answer came back (the instances are tried again)."""


@dataclass(frozen=True)
class EchoAnswer:
    """The service answered an authenticated request: HTTP status, round trip."""

    url: str
    status: int
    seconds: float


class WebClient:
    """Requests to one DICOMweb service. Not shared between threads: each lane has its
    own (the connection pool and the token cache are per client)."""

    def __init__(self, settings: WebSettings) -> None:
        self.settings = settings
        # given with each request: a session's own is overridden by $REQUESTS_CA_BUNDLE
        self.verify: bool | str = str(settings.ca) if settings.ca is not None else True
        self.session = requests.Session()
        self.session.headers["User-Agent"] = USER_AGENT
        self.session.auth = auth_for(settings)

    def close(self) -> None:
        """Close the pooled connections."""
        self.session.close()

    def stow(
        self, parts: Sequence[Part], take: Callable[[int], object] | None = None
    ) -> StowAnswer:
        """POST ``parts`` to ``{url}/studies`` and read the answer per instance; ``take``
        paces the body (a destination's bandwidth cap, ``agent.forward.pacing``)."""
        body = StowBody(parts, take=take)
        url = f"{self.settings.url}/studies"
        headers = {"Content-Type": body.content_type, "Accept": ANSWER_TYPE}
        try:
            answer = self.session.post(url, data=body, headers=headers, verify=self.verify,
                                       timeout=self.settings.timeout)
        except PeerError:  # a secret file or the token endpoint: the service cannot be used
            raise
        except requests.RequestException as exc:
            raise _failure(exc, self.settings) from None
        except OSError as exc:  # reading an archived file
            raise SendError(f"cannot read a file to send: {exc}") from None
        with answer:
            return read_answer(answer.status_code, answer.reason or "", answer.headers,
                               answer.content)

    def echo(self) -> EchoAnswer:
        """QIDO-RS ``GET {url}/studies?limit=1``: reachable, TLS trusted, credentials
        taken; PeerError saying in words why not."""
        url = f"{self.settings.url}/studies"
        started = time.monotonic()
        try:
            answer = self.session.get(url, params={"limit": "1", "includefield": "0020000D"},
                                      headers={"Accept": ANSWER_TYPE}, verify=self.verify,
                                      timeout=self.settings.timeout)
        except requests.RequestException as exc:
            raise _failure(exc, self.settings, echo=True) from None
        took = time.monotonic() - started
        with answer:
            if answer.status_code in (200, 204):
                return EchoAnswer(url, answer.status_code, took)
            raise PeerError(f"{url}: {http_words(answer.status_code, answer.reason or '')}")


def http_words(status: int, phrase: str) -> str:
    """An HTTP error status in words, for the log, the queue and ``echo``."""
    meaning = {
        401: "our credentials were refused",
        403: "we are not allowed to do this",
        404: "not found (is url the DICOMweb root?)",
        407: "the proxy wants credentials",
        408: "it timed out waiting for our request",
        413: "the request is too large for it (lower max_request_mb)",
        415: "it does not take this media type",
        429: "too many requests: it asks us to slow down",
        503: "it is unavailable for now",
    }.get(status, "")
    said = f"HTTP {status} {phrase}".strip()
    return f"{said}: {meaning}" if meaning else said


def _failure(
    exc: requests.RequestException, settings: WebSettings, echo: bool = False
) -> Exception:
    """PeerError when the service was not reached; SendError once the request was out."""
    where = settings.url
    if isinstance(exc, requests.exceptions.SSLError):
        found = _SSL_REASON.search(str(exc))
        reason = found.group(1).strip() if found else "handshake failed"
        trust = f"the CA in {settings.ca}" if settings.ca else "the system's trust store"
        return PeerError(f"{where}: TLS: {reason} (checked against {trust})")
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return PeerError(f"{where}: unreachable: no answer to connect within"
                         f" {settings.timeout:g} s")
    if isinstance(exc, requests.exceptions.ProxyError):
        return PeerError(f"{where}: unreachable through the proxy: {exc}")
    if isinstance(exc, requests.ConnectionError) and _not_connected(exc):
        found = _ERRNO.search(str(exc))
        reason = found.group(1).strip() if found else "cannot connect"
        return PeerError(f"{where}: unreachable: {reason}")
    if echo:
        return PeerError(f"{where}: {type(exc).__name__}: no answer")
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return SendError(f"no answer within {settings.timeout:g} s")
    return SendError(f"connection lost during the request ({type(exc).__name__})")


def _not_connected(exc: requests.ConnectionError) -> bool:
    """Whether the connection was never made (refused, no route, unknown name)."""
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, NewConnectionError)
