"""Compare the codec libraries pydicom can use, on real CT and MR pixel data from pydicom's
own samples: decode speed per syntax, JPEG-LS lossless encode speed and ratio, and (with
--wheels) which have wheels on PyPI for 64-bit and 32-bit ARM.

    python scripts/bench_codecs.py [--repeat N] [--wheels]

Libraries not installed are reported as such (python-gdcm and imagecodecs are not
dependencies: install them, e.g. with pip --target DIR and PYTHONPATH=DIR, to compare).
The CT image is pydicom's CT_small.dcm tiled 4 x 4 into a 512 x 512 slice (real CT
values, a real slice's size).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread, uid
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.encoders.base import get_encoder
from pydicom.pixels.utils import as_pixel_options

warnings.simplefilter("ignore")

DECODE_SAMPLES = {
    "JPEG-LS lossless (MR)": "MR_small_jpeg_ls_lossless.dcm",
    "JPEG 2000 lossless (MR)": "MR_small_jp2klossless.dcm",
    "JPEG lossless SV1 (RGB)": "SC_rgb_jpeg_gdcm.dcm",
    "JPEG baseline (RGB)": "SC_rgb_jpeg_dcmtk.dcm",
    "RLE lossless (MR)": "MR_small_RLE.dcm",
}
PLUGINS = ("pylibjpeg", "pyjpegls", "gdcm", "pydicom")
PACKAGES = ("numpy", "pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle",
            "pyjpegls", "python-gdcm", "imagecodecs")
PLATFORMS = ("manylinux2014_aarch64", "manylinux_2_17_armv7l", "linux_armv7l")


def timed(work: Callable[[], Any], repeat: int) -> float:
    """Milliseconds per call, the best of ``repeat`` runs."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best * 1000


def _path(name: str) -> str:
    found = get_testdata_file(name)
    assert found is not None, name
    return str(found)


def decode_figures(repeat: int) -> None:
    """Each syntax decoded by each pydicom plugin that can, and by imagecodecs."""
    print("decode, ms per image (best of", repeat, "):")
    for label, name in DECODE_SAMPLES.items():
        ds = dcmread(_path(name))
        syntax = ds.file_meta.TransferSyntaxUID
        decoder = get_decoder(syntax)
        row = []
        for plugin in PLUGINS:
            if plugin not in decoder.available_plugins:
                continue
            try:
                ms = timed(partial(decoder.as_array, ds, decoding_plugin=plugin), repeat)
                row.append(f"{plugin} {ms:.2f}")
            except Exception as exc:  # a plugin that cannot take this sample
                row.append(f"{plugin} failed ({type(exc).__name__})")
        row.append(_imagecodecs_decode(ds, syntax, repeat))
        print(f"  {label:26} {syntax.name[:34]:34} " + "; ".join(row))


def _imagecodecs_decode(ds: Any, syntax: str, repeat: int) -> str:
    try:
        import imagecodecs
    except ImportError:
        return "imagecodecs not installed"
    functions = {
        uid.JPEGLSLossless: "jpegls_decode", uid.JPEG2000Lossless: "jpeg2k_decode",
        uid.JPEGLosslessSV1: "ljpeg_decode", uid.JPEGBaseline8Bit: "jpeg8_decode",
    }
    if syntax not in functions:
        return "imagecodecs: no DICOM RLE"
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    function = getattr(imagecodecs, functions[syntax])
    try:
        return f"imagecodecs {timed(lambda: function(frame), repeat):.2f}"
    except Exception as exc:
        return f"imagecodecs failed ({type(exc).__name__})"


def ct_slice() -> tuple[Any, np.ndarray]:
    """pydicom's CT_small (128 x 128) tiled into a 512 x 512 slice, and its data set."""
    ds = dcmread(_path("CT_small.dcm"))
    arr = np.tile(ds.pixel_array, (4, 4))
    ds.Rows, ds.Columns = arr.shape
    ds.PixelData = arr.tobytes()
    return ds, arr


def encode_figures(repeat: int) -> None:
    """JPEG-LS lossless encode of a CT slice: speed, ratio, and that it round-trips."""
    ds, arr = ct_slice()
    opts = {**as_pixel_options(ds), "number_of_frames": 1}
    print(f"JPEG-LS lossless encode of a 512 x 512 CT slice ({arr.nbytes} bytes), ms:")
    encoder = get_encoder(uid.JPEGLSLossless)
    for plugin in ("pyjpegls", "gdcm"):
        if plugin not in encoder.available_plugins:
            print(f"  {plugin:12} not available for JPEG-LS encoding")
            continue
        encoded = encoder.encode(arr, encoding_plugin=plugin, **opts)
        ms = timed(lambda p=plugin: encoder.encode(arr, encoding_plugin=p, **opts), repeat)
        back = get_decoder(uid.JPEGLSLossless).as_array(
            encapsulate([encoded]), **{**opts, "transfer_syntax_uid": uid.JPEGLSLossless})[0]
        print(f"  {plugin:12} {ms:7.2f}  ratio {arr.nbytes / len(encoded):.2f}:1"
              f"  lossless {np.array_equal(back, arr)}")
    try:
        import imagecodecs

        unsigned = arr.view(np.uint16)  # imagecodecs takes no signed data: the same bits
        encoded = imagecodecs.jpegls_encode(unsigned)
        ms = timed(lambda: imagecodecs.jpegls_encode(unsigned), repeat)
        same = np.array_equal(imagecodecs.jpegls_decode(encoded), unsigned)
        print(f"  {'imagecodecs':12} {ms:7.2f}  ratio {arr.nbytes / len(encoded):.2f}:1"
              f"  lossless {same}")
    except ImportError:
        print("  imagecodecs  not installed")
    rle = get_encoder(uid.RLELossless)
    for plugin in ("pylibjpeg", "pydicom"):
        if plugin in rle.available_plugins:
            encoded = rle.encode(arr, encoding_plugin=plugin, **opts)
            ms = timed(lambda p=plugin: rle.encode(arr, encoding_plugin=p, **opts), repeat)
            print(f"  (RLE, {plugin:9}) {ms:7.2f}  ratio {arr.nbytes / len(encoded):.2f}:1")


def ct_decode_figures(repeat: int) -> None:
    """The CT slice encoded losslessly in each syntax, decoded by each plugin."""
    ds, arr = ct_slice()
    opts = {**as_pixel_options(ds), "number_of_frames": 1}
    print("decode of the 512 x 512 CT slice, ms:")
    for syntax, extra in ((uid.JPEGLSLossless, {}), (uid.JPEG2000Lossless, {"use_mct": False}),
                          (uid.RLELossless, {})):
        frame = get_encoder(syntax).encode(arr, **opts, **extra)
        data = encapsulate([frame])
        decoder = get_decoder(syntax)
        row = []
        for plugin in PLUGINS:
            if plugin not in decoder.available_plugins:
                continue
            decode_opts = {**opts, "transfer_syntax_uid": syntax, "decoding_plugin": plugin}
            ms = timed(partial(decoder.as_array, data, **decode_opts), repeat)
            row.append(f"{plugin} {ms:.2f}")
        try:
            import imagecodecs

            name = {uid.JPEGLSLossless: "jpegls_decode", uid.JPEG2000Lossless: "jpeg2k_decode"}
            if syntax in name:
                function = getattr(imagecodecs, name[syntax])
                row.append(f"imagecodecs {timed(partial(function, frame), repeat):.2f}")
        except ImportError:
            row.append("imagecodecs not installed")
        print(f"  {syntax.name[:34]:34} {len(frame):7} bytes  " + "; ".join(row))


def wheel_figures() -> None:
    """Whether PyPI has a binary wheel for CPython 3.11 on each ARM platform."""
    print("wheels on PyPI for CPython 3.11 (pip download --only-binary=:all:):")
    with tempfile.TemporaryDirectory() as scratch:
        for platform in PLATFORMS:
            found = []
            for package in PACKAGES:
                ok = subprocess.run(
                    [sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                     "--only-binary=:all:", "--platform", platform, "--python-version", "3.11",
                     "-d", str(Path(scratch) / platform), package],
                    capture_output=True).returncode == 0
                found.append(f"{package} {'yes' if ok else 'NO'}")
            print(f"  {platform:24} " + ", ".join(found))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--wheels", action="store_true", help="ask PyPI for ARM wheels")
    args = parser.parse_args()
    decode_figures(args.repeat)
    ct_decode_figures(args.repeat)
    encode_figures(args.repeat)
    if args.wheels:
        wheel_figures()


if __name__ == "__main__":
    main()
