"""A real reverse proxy in front of Orthanc's DICOMweb for the bearer and OAuth2 tests:
nginx (Debian's, on an ephemeral port, its prefix and configuration in the test's
directory, never the system service) asks a small token server, over ``auth_request``,
whether each request's bearer token is valid.

The token server issues short-lived tokens for the OAuth2 client credentials grant
(``POST /token``, client id and secret as HTTP basic) and answers nginx's ``GET
/validate`` (204 or 401). A test may also accept a token it chose (a bearer token kept
in a file) and revoke any token at any moment.
"""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from tests.loopback_http import LoopbackHTTP
from tests.support import free_port, wait_until

NGINX = Path("/usr/sbin/nginx")


class TokenServer(LoopbackHTTP):
    """OAuth2 token endpoint and token validator, in a thread of the test process."""

    def __init__(self, client_id: str, secret: str, lifetime: float) -> None:
        self.client_id = client_id
        self.secret = secret
        self.lifetime = lifetime
        self.lock = threading.Lock()
        self.valid: dict[str, float] = {}  # token -> expiry (monotonic)
        self.issued: list[str] = []
        self.refused: list[str] = []  # tokens nginx was told were not valid
        super().__init__(self._handler())

    @property
    def token_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def accept(self, token: str, lifetime: float = 3600.0) -> None:
        """Take ``token`` as valid (a bearer token the test wrote to a file)."""
        with self.lock:
            self.valid[token] = time.monotonic() + lifetime

    def revoke_all(self) -> None:
        """Every token valid so far stops being valid (the archive restarted, say)."""
        with self.lock:
            self.valid.clear()

    def expired(self, token: str) -> bool:
        with self.lock:
            return time.monotonic() >= self.valid.get(token, 0.0)

    def _issue(self) -> dict[str, Any]:
        token = secrets.token_urlsafe(16)
        with self.lock:
            self.valid[token] = time.monotonic() + self.lifetime
            self.issued.append(token)
        return {"access_token": token, "token_type": "Bearer", "expires_in": self.lifetime}

    def _is_valid(self, header: str) -> bool:
        token = header.removeprefix("Bearer ").strip()
        ok = header.startswith("Bearer ") and not self.expired(token)
        if not ok:
            with self.lock:
                self.refused.append(token)
        return ok

    def _client_ok(self, header: str) -> bool:
        expected = base64.b64encode(f"{self.client_id}:{self.secret}".encode()).decode()
        return header == f"Basic {expected}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                valid = self.path == "/validate" and server._is_valid(
                    self.headers.get("Authorization", ""))
                self._answer(204 if valid else 401, b"")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                form = parse_qs(self.rfile.read(length).decode())
                if self.path != "/token" or form.get("grant_type") != ["client_credentials"]:
                    self._answer(400, b'{"error": "unsupported_grant_type"}')
                elif not server._client_ok(self.headers.get("Authorization", "")):
                    self._answer(401, b'{"error": "invalid_client"}')
                else:
                    self._answer(200, json.dumps(server._issue()).encode())

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        return Handler



class Nginx:
    """nginx proxying ``/dicom-web/`` to ``upstream`` once ``auth_request`` to the
    validator said yes; the request body streamed through, unbuffered."""

    def __init__(self, workdir: Path, upstream: str, validate: str,
                 tls: tuple[Path, Path] | None = None) -> None:
        self.workdir = workdir
        self.tls = tls  # (certificate, key): HTTPS
        self.upstream = upstream  # http://127.0.0.1:PORT/dicom-web/
        self.validate = validate  # http://127.0.0.1:PORT/validate
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def dicomweb(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}/dicom-web"

    def config_text(self) -> str:
        w = self.workdir
        listen = f"127.0.0.1:{self.port}"
        if self.tls:
            listen += (f" ssl;\n        ssl_certificate {self.tls[0]};\n"
                       f"        ssl_certificate_key {self.tls[1]}")
        return f"""
daemon off;
master_process off;
pid {w}/nginx.pid;
error_log {w}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {w}/access.log;
    client_body_temp_path {w}/body;
    proxy_temp_path {w}/proxy;
    fastcgi_temp_path {w}/fastcgi;
    uwsgi_temp_path {w}/uwsgi;
    scgi_temp_path {w}/scgi;
    client_max_body_size 0;
    server {{
        listen {listen};
        location /dicom-web/ {{
            auth_request /_validate;
            proxy_pass {self.upstream};
            proxy_request_buffering off;
            proxy_http_version 1.1;
            proxy_set_header Authorization "";
        }}
        location = /_validate {{
            internal;
            proxy_pass {self.validate};
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
        }}
    }}
}}
"""

    def __enter__(self) -> Nginx:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "nginx.conf"
        config.write_text(self.config_text())
        with (self.workdir / "stderr.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [str(NGINX), "-p", str(self.workdir), "-c", str(config), "-e",
                 str(self.workdir / "error.log")], stdout=log, stderr=log)
        try:
            wait_until(self._listening, 20, "nginx to listen")
        except BaseException:
            self.__exit__()
            raise
        return self

    def _listening(self) -> bool:
        import socket

        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError((self.workdir / "error.log").read_text())
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
