"""Compression for the link, measured: the bytes a destination receives with each
``transfer_syntax`` against as stored, on real CT, through a real forward to Orthanc;
and the peak memory of encoding (and verifying) a large multi-frame instance.

    python scripts/bench_link.py [--copies N] [--frames N]

The CT slices are pydicom's own (CT_small.dcm, 128 x 128, and the 512 x 512 slice of
J2K_pixelrep_mismatch.dcm, decompressed), each sent ``--copies`` times with fresh UIDs.
The bytes on the wire are counted by a TCP relay between the agent and Orthanc (all that
the agent sent: PDUs, association set-up, C-STOREs); Orthanc's REST API says which
transfer syntax each instance arrived in. The multi-frame instance repeats the
512 x 512 slice ``--frames`` times (2048: 1 GiB of pixel data); it is encoded to JPEG-LS
in a child process whose peak RSS is read from the kernel (ru_maxrss).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]
os.environ["PYTHONPATH"] = str(ROOT)  # the agent's forwarding process imports this tree

from bench.peers import Orthanc, free_port  # noqa: E402
from pydicom import dcmread, uid  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402

from agent import config as config_module  # noqa: E402
from agent.app import Agent  # noqa: E402
from tests import scu  # noqa: E402

warnings.simplefilter("ignore")
CHOICES = ("as-stored", "jpeg-ls-lossless", "rle", "deflate")


def real_ct(directory: Path, copies: int) -> list[Path]:
    """pydicom's real CT slices, uncompressed, ``copies`` of each with fresh UIDs."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in ("CT_small.dcm", "J2K_pixelrep_mismatch.dcm"):
        ds = dcmread(get_testdata_file(name))
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress(generate_instance_uid=False)
        ds.StudyInstanceUID = uid.generate_uid()
        for number in range(copies):
            ds.SOPInstanceUID = uid.generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            target = directory / f"{Path(name).stem}-{number}.dcm"
            ds.save_as(target, enforce_file_format=True)
            paths.append(target)
    return paths


class Counting:
    """A TCP relay to ``port`` counting the bytes sent towards it: the wire, measured."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sent = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self.listener.accept()
            upstream = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False),
                             daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, counted: bool) -> None:
        try:
            while data := source.recv(1 << 16):
                if counted:
                    with self._lock:
                        self.sent += len(data)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)


def orthanc_syntaxes(orthanc: Orthanc, uids: list[str]) -> set[str]:
    """The transfer syntaxes Orthanc says it received these instances in."""
    syntaxes = set()
    for sop in uids:
        [found] = orthanc.rest("/tools/lookup", sop.encode())
        syntaxes.add(orthanc.rest(f"/instances/{found['ID']}/metadata?expand")["TransferSyntax"])
    return syntaxes


def forward_figures(work: Path, copies: int) -> None:
    """Forward the same CT, with fresh UIDs, to one Orthanc under each choice."""
    with Orthanc(work / "orthanc") as orthanc:
        relay = Counting(orthanc.port)
        port = free_port()
        lines = ["[agent]", f"port = {port}", 'bind = "127.0.0.1"',
                 f'data_dir = "{work / "data"}"', "min_free_mb = 0", "",
                 "[peers.CT]", 'ae_title = "MODALITY"', 'host = "127.0.0.1"', "port = 104",
                 'allow = ["store"]']
        for number, choice in enumerate(CHOICES):  # Orthanc answers to any called AE
            name = choice.replace("-", "_").upper()
            lines += ["", f"[peers.{name}]", f'ae_title = "ORTHANC{number}"',
                      'host = "127.0.0.1"',
                      f"port = {relay.port}", f'transfer_syntax = "{choice}"']
        names = [c.replace("-", "_").upper() for c in CHOICES]
        (work / "agent.toml").write_text("\n".join(lines) + "\n")
        print(f"bytes Orthanc received for {2 * copies} real CT slices, by transfer_syntax:")
        for choice, name in zip(CHOICES, names, strict=True):
            sent = real_ct(work / choice, copies)
            uids = [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in sent]
            text = (work / "agent.toml").read_text()
            config_path = work / f"agent-{name}.toml"
            config_path.write_text(text + f'\n[forward]\nto = ["{name}"]\n')
            config = config_module.load_file(config_path)
            before, wire = orthanc.count(), relay.sent
            started = time.monotonic()
            with Agent(config):
                assert scu.store(port, sent) == [0] * len(sent)
                while orthanc.count() < before + len(sent):
                    time.sleep(0.2)
            took = time.monotonic() - started
            syntaxes = orthanc_syntaxes(orthanc, uids)
            received = relay.sent - wire
            stored = sum(p.stat().st_size for p in sent)
            print(f"  {choice:18} {received:10} bytes  {stored / received:5.2f}:1 of the"
                  f" {stored} stored  ({', '.join(uid.UID(s).name for s in syntaxes)};"
                  f" {took:.1f} s)")


def write_multiframe(path: Path, frames: int) -> None:
    """An uncompressed multi-frame CT of ``frames`` real 512 x 512 slices, written frame
    by frame (the whole never in memory)."""
    ds = dcmread(get_testdata_file("J2K_pixelrep_mismatch.dcm"))
    ds.decompress(generate_instance_uid=False)
    frame = ds.pixel_array.astype(ds.pixel_array.dtype.newbyteorder("<")).tobytes()
    del ds.PixelData
    ds.NumberOfFrames = frames
    ds.SOPInstanceUID = uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    with path.open("ab") as handle:
        handle.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, len(frame) * frames))
        for _ in range(frames):
            handle.write(frame)


CHILD = """
import sys, time
from pathlib import Path
from agent.dicom import transcode
source, out, verify = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1"
started = time.monotonic()
transcode.convert(source, "1.2.840.10008.1.2.4.80", out)
if verify:
    transcode.verify(source, out)
print(f"{time.monotonic() - started:.1f}")
"""


def memory_figures(work: Path, frames: int) -> None:
    """Peak RSS of a child process encoding (and verifying) the multi-frame instance."""
    big = work / "multiframe.dcm"
    write_multiframe(big, frames)
    size = big.stat().st_size
    print(f"JPEG-LS encoding of a {frames}-frame CT ({size / 2**20:.0f} MiB), in a child:")
    for verify in (False, True):
        out = work / f"multiframe-{verify}.dcm"
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(big), str(out),
                                  "1" if verify else "0"], stdout=subprocess.PIPE, text=True,
                                 env={**os.environ, "PYTHONPATH": str(ROOT)})
        _, status, usage = os.wait4(child.pid, 0)
        took = child.stdout.read().strip() if child.stdout else "?"
        assert status == 0, status
        peak = usage.ru_maxrss / 1024  # kilobytes on Linux
        encoded = out.stat().st_size
        print(f"  {'encode + verify' if verify else 'encode':16} peak RSS {peak:6.0f} MiB"
              f"  {took} s  {encoded / 2**20:.0f} MiB ({size / encoded:.2f}:1)")
        out.unlink()
    big.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=25)
    parser.add_argument("--frames", type=int, default=2048)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        forward_figures(Path(scratch), args.copies)
        memory_figures(Path(scratch), args.frames)


if __name__ == "__main__":
    main()
