"""Real PACS peers for the query/retrieve SCU tests: DCMTK's dcmqrscp and Orthanc;
and Orthanc with its DICOMweb plugin (``OrthancWeb``) for the DICOMweb destinations."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

from bench.peers import Orthanc

from tests.support import dcmtk, free_port, wait_until

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


class Dcmqrscp:
    """dcmqrscp with one storage area (AE ``DCMQR``, open to any peer) and a HostTable.

    ``hosts`` maps a symbolic name to (AE title, port) on 127.0.0.1: the move
    destinations dcmqrscp knows.
    """

    ae_title = "DCMQR"

    def __init__(self, workdir: Path, hosts: dict[str, tuple[str, int]],
                 options: tuple[str, ...] = ()) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.hosts = hosts
        self.options = options  # extra command line options, e.g. -XF
        self.proc: subprocess.Popen[bytes] | None = None

    def config_text(self) -> str:
        """dcmqrscp.cfg, as its documentation describes it."""
        hosts = "\n".join(f"{name} = ({ae}, 127.0.0.1, {port})"
                          for name, (ae, port) in self.hosts.items())
        return (
            f"NetworkTCPPort = {self.port}\nMaxPDUSize = 16384\nMaxAssociations = 16\n"
            f"HostTable BEGIN\n{hosts}\nHostTable END\n"
            "VendorTable BEGIN\nVendorTable END\n"
            f"AETable BEGIN\n{self.ae_title} {self.workdir / 'db'} RW (500, 1024mb) ANY\n"
            "AETable END\n"
        )

    def __enter__(self) -> Dcmqrscp:
        (self.workdir / "db").mkdir(parents=True, exist_ok=True)
        config = self.workdir / "dcmqrscp.cfg"
        config.write_text(self.config_text())
        with (self.workdir / "dcmqrscp.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [dcmtk("dcmqrscp"), *self.options, "-c", str(config), str(self.port)],
                stdout=log, stderr=log, start_new_session=True)
        wait_until(self._answers, 20, "dcmqrscp to listen")
        return self

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError((self.workdir / "dcmqrscp.log").read_text())
        echo = subprocess.run([dcmtk("echoscu"), "-aec", self.ae_title, "127.0.0.1",
                               str(self.port)], capture_output=True)
        return echo.returncode == 0

    def load(self, paths: list[Path]) -> None:
        """Store files with DCMTK's storescu, as a modality would."""
        sent = subprocess.run(
            [dcmtk("storescu"), "-aec", self.ae_title, "127.0.0.1", str(self.port),
             *map(str, paths)], capture_output=True, text=True, timeout=120)
        assert sent.returncode == 0, sent.stderr

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


class OrthancWeb(Orthanc):
    """Orthanc with its DICOMweb plugin at ``/dicom-web``, HTTP basic auth on for every
    request when ``users`` ({user: password}) is given; ``rest`` authenticates as the
    first user. Its ports stay the same across a stop and a start (``restart``)."""

    def __init__(self, workdir: Path, users: dict[str, str] | None = None) -> None:
        super().__init__(workdir)
        self.users = users or {}

    @property
    def dicomweb(self) -> str:
        """The DICOMweb root, as a destination's ``url``."""
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    def command(self) -> list[str]:
        command = super().command()
        path = Path(command[-1])
        config = json.loads(path.read_text())
        config.update({
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "AuthenticationEnabled": bool(self.users), "RegisteredUsers": self.users,
        })
        path.write_text(json.dumps(config, indent=1))
        return command

    def rest(self, path: str, data: bytes | None = None, timeout: float = 60) -> Any:
        return json.loads(self.raw(path, data, timeout) or b"null")

    def raw(self, path: str, data: bytes | None = None, timeout: float = 60) -> bytes:
        """The body of a REST answer, as bytes (an instance's file, for one)."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=data)
        if self.users:
            user, password = next(iter(self.users.items()))
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return bytes(answer.read())

    def stop(self) -> None:
        """Stop Orthanc (its storage stays)."""
        self.__exit__()
        self.proc = None

    def start(self) -> None:
        """Start it again on the same ports."""
        with (self.workdir / "log.txt").open("ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=log,
                                         env=self.environment(), cwd=self.workdir)
        wait_until(self.ready, 60, "Orthanc to start again")
