"""Real PACS peers for the query/retrieve SCU tests: DCMTK's dcmqrscp and Orthanc."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from tests.support import dcmtk, free_port, wait_until


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
