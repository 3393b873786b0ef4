"""A scripted STOW-RS service (the DICOMweb counterpart of test_forward's ScriptedSCP):
it reads each request's multipart body as an archive would, keeps the instances, and
answers from a script, one entry per request, so a test can show what the agent does
with each HTTP status and Failure Reason."""

from __future__ import annotations

import email.parser
import io
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from pydicom import dcmread

from tests.loopback_http import LoopbackHTTP


@dataclass
class Answer:
    """How to answer one request: the HTTP status, headers, and per instance (by its
    position in the request) ("ok", warning reason | None) or ("failed", failure reason);
    instances not named are left out of the body. ``drop``: close without answering."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    instances: Callable[[list[str]], dict[str, tuple[str, int | None]]] | None = None
    drop: bool = False


@dataclass
class Received:
    """One request as it came."""

    at: float  # time.time()
    uids: list[str]
    files: dict[str, bytes]
    content_type: str


def all_stored(uids: list[str]) -> dict[str, tuple[str, int | None]]:
    return {uid: ("ok", None) for uid in uids}


class ScriptedStow(LoopbackHTTP):
    """The service, in a thread of the test process; after the script, every request is
    answered by ``default`` (200, all its instances stored)."""

    def __init__(self, script: list[Answer], default: Answer | None = None) -> None:
        self.script = list(script)
        self.default = default or Answer(instances=all_stored)
        self.requests: list[Received] = []
        self.stored: dict[str, bytes] = {}
        self.lock = threading.Lock()
        super().__init__(self._handler())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/dicom-web"

    def _next(self) -> Answer:
        with self.lock:
            return self.script.pop(0) if self.script else self.default

    def _receive(self, content_type: str, body: bytes) -> Received:
        message = email.parser.BytesParser().parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + body)
        files = {}
        for part in message.get_payload():
            assert part.get_content_type() == "application/dicom"
            data = part.get_payload(decode=True)
            files[str(dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)] = data
        received = Received(time.time(), list(files), files, content_type)
        with self.lock:
            self.requests.append(received)
        return received

    def _body(self, answer: Answer, received: Received) -> dict[str, Any]:
        said = answer.instances(received.uids) if answer.instances else {}
        stored, failed = [], []
        for uid, (what, reason) in said.items():
            item: dict[str, Any] = {"00081155": {"vr": "UI", "Value": [uid]}}
            if what == "ok":
                if reason is not None:
                    item["00081196"] = {"vr": "US", "Value": [reason]}
                stored.append(item)
                with self.lock:
                    self.stored[uid] = received.files[uid]
            else:
                item["00081197"] = {"vr": "US", "Value": [reason]}
                failed.append(item)
        body: dict[str, Any] = {}
        if stored:
            body["00081199"] = {"vr": "SQ", "Value": stored}
        if failed:
            body["00081198"] = {"vr": "SQ", "Value": failed}
        return body

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                body = self.rfile.read(length)
                answer = service._next()
                received = service._receive(self.headers["Content-Type"], body)
                if answer.drop:
                    self.close_connection = True
                    self.connection.close()
                    return
                data = json.dumps(service._body(answer, received)).encode()
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        return Handler

