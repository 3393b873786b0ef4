"""The metrics endpoint: an HTTP(S) server on its own thread answering ``GET /metrics``
(Prometheus's text format, from ``agent.metrics.collector``) and ``GET /healthz`` (200
while the health check passes, 503 otherwise).

The standard library's ``ThreadingHTTPServer``: two paths and a header check need no
framework, and prometheus_client's own server has neither a bearer token nor /healthz.
Each connection is served on its own daemon thread, at most ``MAX_CONNECTIONS`` at once
and each for at most ``CONNECTION_TIMEOUT`` seconds of silence, so a slow or hostile
client cannot starve the box. With a token configured, every request without it gets
401 and an empty body, whatever its path; the token is compared in constant time and
never logged.
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
import socketserver
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from agent import threads
from agent.config import Config
from agent.errors import ConfigError
from agent.metrics.access import TokenCheck
from agent.metrics.collector import StatusCollector
from agent.metrics.settings import MetricsSettings
from agent.status import State, StatusModel
from agent.status_parts import MetricsState
from agent.tls import VERSIONS, TlsSettings

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 8
CONNECTION_TIMEOUT = 10.0  # seconds a client may stay silent (TLS handshake included)
POLL = 0.5  # how often the accepting loop looks whether it should stop
STOPS_WITHIN = 5.0


class MetricsEndpoint:
    """``/metrics`` and ``/healthz`` for the running agent, from its status model."""

    def __init__(self, current: Callable[[], Config], status: StatusModel) -> None:
        self.current = current  # the configuration in force: its token file is read live
        self.status = status
        settings = current().metrics
        if settings is None:
            raise ValueError("no [metrics] table: the endpoint is off")
        self.settings: MetricsSettings = settings  # as started: the address and HTTPS
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StatusCollector(status))
        self.token = TokenCheck()
        self.url: str | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._scrapes = 0
        self._scrapes_lock = threading.Lock()

    def start(self) -> None:
        """Bind and serve on a thread; ConfigError naming the key if it cannot."""
        settings = self.settings
        context = self._https_context() if settings.tls else None
        try:
            server = _Server(settings.bind, settings.port, self, context)
        except OSError as exc:
            raise ConfigError("metrics.port", f"cannot listen on {settings.bind}:"
                              f"{settings.port}: {exc.strerror or exc}") from None
        self._server = server
        host = f"[{settings.bind}]" if ":" in settings.bind else settings.bind
        self.url = f"{'https' if context else 'http'}://{host}:{server.server_address[1]}"
        self._thread = threading.Thread(
            target=server.serve_forever, args=(POLL,), name="metrics", daemon=True
        )
        self._thread.start()
        self.status.metrics_state(MetricsState(self.url))
        log.info("metrics endpoint on %s/metrics%s", self.url,
                 " (bearer token required)" if self._token_file() else "")
        if not settings.loopback:
            log.warning(
                "the metrics endpoint listens on %s, reachable from the network%s",
                settings.bind, "" if self._token_file() else " without a token",
            )

    def renew_tls(self) -> None:
        """Take the [tls] certificate and key again (a reload renewed them)."""
        if self._server is not None and self._server.context is not None:
            try:
                self._server.context = self._https_context()
            except ConfigError as exc:  # tls.load took them: only a race with an edit
                log.error("the metrics endpoint keeps its previous certificate: %s", exc)

    def close(self) -> None:
        """Stop accepting, close the socket and wait (bounded) for the thread."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()  # the accepting loop ends within POLL s; handlers run on alone
        server.server_close()
        threads.join(self._thread, STOPS_WITHIN)
        last = self.status.snapshot().metrics
        self.status.metrics_state(MetricsState(None, last.last_scrape, last.scrapes))

    def _token_file(self) -> Path | None:
        settings = self.current().metrics or self.settings  # [metrics] removed: until restart
        return settings.token_file

    def allowed(self, authorization: str | None) -> bool:
        """Whether a request with this Authorization header may be answered."""
        return self.token.allows(self._token_file(), authorization)

    def metrics(self) -> bytes:
        """One scrape: the text, counted in the status model."""
        text = generate_latest(self.registry)
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        with self._scrapes_lock:  # two scrapes at once are counted in order
            self._scrapes += 1
            self.status.metrics_state(MetricsState(self.url, now, self._scrapes))
        return text

    def healthy(self) -> bool:
        """Whether the watchdog's health check passes (the agent serves)."""
        return self.status.snapshot().state is State.SERVING

    def _https_context(self) -> ssl.SSLContext:
        tls = self.current().tls
        if tls is None:
            raise ConfigError("metrics.tls", "true needs a [tls] table (its certificate and key)")
        return https_context(tls)


def https_context(tls: TlsSettings) -> ssl.SSLContext:
    """A server context with the agent's certificate and key; no client certificate is
    asked for (the bearer token is the endpoint's authentication)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = VERSIONS[tls.min_version]
    try:
        context.load_cert_chain(tls.certificate, tls.private_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("metrics.tls", f"cannot use the [tls] certificate and key: {exc}") \
            from None
    return context


class _Server(ThreadingHTTPServer):
    """The HTTP server: a thread per connection, a bounded number of them, TLS if asked."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, host: str, port: int, endpoint: MetricsEndpoint,
                 context: ssl.SSLContext | None) -> None:
        self.address_family = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        self.endpoint = endpoint
        self.context = context
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__((host, port), _Handler)

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse lookup of the address, which on a network
        without DNS can hold start-up for as long as the resolver's timeouts."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def get_request(self) -> tuple[Any, Any]:
        """Accept; wrap in TLS (the handshake happens on the connection's own thread)."""
        sock, address = super().get_request()
        context = self.context
        if context is not None:
            sock = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve on a thread if a slot is free; else close the connection at once."""
        if not self.slots.acquire(blocking=False):
            log.debug("metrics: %d connections already; one closed", MAX_CONNECTIONS)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that broke off, or spoke plain HTTP to HTTPS: not the agent's error."""
        log.debug("metrics: a connection failed", exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    """``GET /metrics`` and ``GET /healthz``; 401, 404 and 405 for the rest."""

    server: _Server
    server_version = "edge-agent"
    sys_version = ""
    timeout = CONNECTION_TIMEOUT

    def setup(self) -> None:
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()

    def do_GET(self) -> None:
        """The two paths, once the token (if any) is right."""
        endpoint = self.server.endpoint
        if not endpoint.allowed(self.headers.get("Authorization")):
            self._answer(401, b"", {"WWW-Authenticate": 'Bearer realm="edge-agent"'})
            return
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._answer(200, endpoint.metrics(), {"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})
        elif path == "/healthz":
            healthy = endpoint.healthy()
            self._answer(200 if healthy else 503, b"ok\n" if healthy else b"unhealthy\n")
        else:
            self._answer(404, b"not found: GET /metrics or /healthz\n")

    def _not_allowed(self) -> None:
        if not self.server.endpoint.allowed(self.headers.get("Authorization")):
            self._answer(401, b"", {"WWW-Authenticate": 'Bearer realm="edge-agent"'})
        else:
            self._answer(405, b"only GET\n", {"Allow": "GET"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _not_allowed

    def _answer(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for name, value in {"Content-Type": "text/plain; charset=utf-8", **(headers or {})}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Requests at debug level only (a scrape every 15 s is no news)."""
        log.debug("metrics: %s " + format, self.client_address[0], *args)
