"""Converting a stored instance into another transfer syntax, into a new file.

The archived file is only read. Pixel data goes frame by frame: each frame is decoded
(pydicom's decoders reading the file itself), encoded if the target is compressed, and
written before the next is read, so a 1 GB multi-frame instance never sits in memory.
The elements before Pixel Data are read and written again in the target's encoding;
elements after it (trailing padding, digital signatures, which the new encoding voids)
are left out.

Lossy stays lossy (PS3.5 8.2): lossy data decompressed keeps Lossy Image Compression
"01" and names its method; it is never re-encoded into another compressed syntax, and
nothing here encodes lossily (``codecs.ENCODINGS`` are lossless).
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from itertools import zip_longest
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from pydicom import dcmread, uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO, DicomFileLike
from pydicom.filewriter import write_dataset, write_file_meta_info

from agent.dicom import codecs
from agent.dicom.codecs import ConversionError, name

if TYPE_CHECKING:
    import numpy as np

PIXEL_DATA = 0x7FE00010
EXTENDED_OFFSETS = (0x7FE00001, 0x7FE00002)
UNDEFINED = 0xFFFFFFFF
ITEM, SEQUENCE_END = b"\xfe\xff\x00\xe0", b"\xfe\xff\xdd\xe0"
# PS3.3 C.7.6.1.1.5: Lossy Image Compression Method of each lossy syntax
_LOSSY_METHOD: dict[str, str] = {
    uid.JPEGBaseline8Bit: "ISO_10918_1",
    uid.JPEGExtended12Bit: "ISO_10918_1",
    uid.JPEGLSNearLossless: "ISO_14495_1",
    uid.JPEG2000: "ISO_15444_1",
    uid.HTJ2K: "ISO_15444_15",
}
TARGETS: tuple[str, ...] = (
    uid.ExplicitVRLittleEndian,
    uid.ImplicitVRLittleEndian,
    uid.ExplicitVRBigEndian,  # retired, but a peer may take nothing else
    codecs.DEFLATED,
    *codecs.ENCODINGS,
)


def convert(source: Path, target: str, out: Path) -> None:
    """Write ``source`` converted to ``target`` at ``out`` (through ``out``.part, renamed).

    Raises ConversionError saying why when it cannot be done here; OSError as usual.
    """
    _check(source, target)
    part = out.with_name(out.name + ".part")
    try:
        with open(source, "rb") as stored, open(part, "wb") as written:
            _write(stored, target, written)
            written.flush()
            os.fsync(written.fileno())
        os.replace(part, out)
    except BaseException:
        part.unlink(missing_ok=True)
        raise


def stored_syntax(source: Path) -> str:
    """The transfer syntax ``source`` is stored in, from its file meta."""
    meta = dcmread(source, stop_before_pixels=True, specific_tags=[]).file_meta
    return str(meta.TransferSyntaxUID)


def _check(source: Path, target: str) -> None:
    """ConversionError if ``target`` cannot be made from ``source`` here, before any work."""
    stored = stored_syntax(source)
    if target not in TARGETS:
        raise ConversionError(f"{name(target)} is not a syntax this agent converts to")
    if stored == codecs.DEFLATED:
        raise ConversionError(f"stored as {name(stored)}, which is not converted")
    if stored in codecs.LOSSY and target in codecs.ENCODINGS:
        raise ConversionError(
            f"stored lossy as {name(stored)}: sent as stored or decompressed, never"
            f" re-encoded as {name(target)}"
        )
    missing = codecs.decode_missing(stored)
    if missing is None:
        missing = codecs.encode_missing(target)
    if missing is not None:
        raise ConversionError(f"stored as {name(stored)}, and {missing}")


def _write(stored: BinaryIO, target: str, written: BinaryIO) -> None:
    """Write the converted instance read from ``stored`` to ``written``."""
    from pydicom.pixels.utils import _array_common  # pydicom 3.0: reads up to the pixels

    head = dcmread(stored, stop_before_pixels=True)
    for _ in head.iterall():  # every element decoded: written anew, UN as its known VR
        pass
    stored.seek(0)
    try:
        _, opts = _array_common(stored, [])
    except AttributeError:
        if target in codecs.ENCODINGS:
            raise ConversionError("it has no pixel data to compress") from None
        _finish(_write_head(written, head, target))  # a non-image: its elements alone
        return
    bits = int(opts.get("bits_allocated", 0))
    if bits == 1 and target in codecs.ENCODINGS:
        raise ConversionError("its pixel data is 1 bit per pixel, which is not compressed")
    compressed = os.fstat(stored.fileno()).st_size - stored.tell()  # from the pixels on
    frames = _decoded(stored, opts)
    first, pixel = next(frames)
    count = int(opts["number_of_frames"])
    _describe(head, pixel, first.nbytes * count, compressed)
    body = _write_head(written, head, target)
    explicit = target != uid.ImplicitVRLittleEndian
    order = ">" if target == uid.ExplicitVRBigEndian else "<"
    frame_opts = {**_pixel_options(head), "number_of_frames": 1}
    if target in codecs.ENCODINGS:
        _write_encapsulated(body, target, _chain(first, frames), count, frame_opts)
    elif bits == 1:
        _write_bits(body, explicit, order, _chain(first, frames), count)
    else:
        _write_native(body, explicit, order, head, first, frames, count)
    _finish(body)


def _write_head(written: BinaryIO, head: Dataset, target: str) -> Any:
    """Write the preamble, file meta and the elements before Pixel Data in ``target``'s
    encoding; the file to write the rest to (a deflating one for Deflated syntax)."""
    meta = FileMetaDataset(head.file_meta)
    meta.TransferSyntaxUID = uid.UID(target)
    written.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(DicomFileLike(written), meta, enforce_standard=True)
    body: Any = _Deflating(written) if target == codecs.DEFLATED else written
    out = DicomBytesIO()  # the elements before the pixels, whole: pydicom seeks in them
    out.is_little_endian = target != uid.ExplicitVRBigEndian
    out.is_implicit_VR = target == uid.ImplicitVRLittleEndian
    write_dataset(out, head)
    body.write(out.getvalue())
    return body


def _finish(body: Any) -> None:
    if isinstance(body, _Deflating):
        body.close()


def _decoded(stored: BinaryIO, opts: dict[str, Any]) -> Iterator[Any]:
    """(array, image pixel description) per frame, decoded from ``stored``."""
    from pydicom.pixels.decoders.base import get_decoder

    syntax = str(opts["transfer_syntax_uid"])
    frames = get_decoder(syntax).iter_array(stored, as_rgb=True, **opts)
    while True:
        try:
            frame = next(frames)
        except StopIteration:
            return
        except Exception as exc:  # the decoders raise anything on data they cannot read
            raise ConversionError(
                f"its {codecs.family(syntax)} pixel data could not be decoded: {_said(exc)}"
            ) from exc
        yield frame


def _said(exc: BaseException) -> str:
    """An exception's message on one line, shortened."""
    return " ".join(str(exc).split())[:240]


def _chain(first: Any, rest: Iterator[Any]) -> Iterator[np.ndarray]:
    yield first
    for arr, _ in rest:
        yield arr


def _describe(head: Dataset, pixel: dict[str, Any], decoded: int, compressed: int) -> None:
    """Set the Image Pixel and lossy attributes the decoded frames now have (``decoded``
    and ``compressed``: the pixel data's sizes, for a lossy ratio not yet recorded)."""
    stored = str(head.file_meta.TransferSyntaxUID)
    head.PhotometricInterpretation = pixel["photometric_interpretation"]
    if int(pixel["samples_per_pixel"]) > 1:
        head.PlanarConfiguration = int(pixel["planar_configuration"])
    for tag in EXTENDED_OFFSETS:
        head.pop(tag, None)
    if stored in codecs.LOSSY:  # PS3.5 8.2: once lossy, always said to be
        head.LossyImageCompression = "01"
        if "LossyImageCompressionMethod" not in head:  # this step, as the standard asks
            head.LossyImageCompressionMethod = _LOSSY_METHOD[stored]
            if "LossyImageCompressionRatio" not in head and compressed > 0:
                head.LossyImageCompressionRatio = f"{decoded / compressed:.2f}"


def _pixel_options(head: Dataset) -> dict[str, Any]:
    from pydicom.pixels.utils import as_pixel_options

    return dict(as_pixel_options(head))


def _frame_bytes(arr: np.ndarray, order: str) -> bytes:
    """A frame's bytes in byte ``order`` ("<" little, ">" big endian), row by row."""
    import numpy

    dtype = arr.dtype.newbyteorder(">" if order == ">" else "<")
    return bytes(numpy.ascontiguousarray(arr, dtype=dtype).data)


def _write_native(
    body: BinaryIO,
    explicit: bool,
    order: str,
    head: Dataset,
    first: Any,
    rest: Iterator[Any],
    count: int,
) -> None:
    """Pixel Data of defined length, frame after frame as decoded."""
    data = _frame_bytes(first, order)
    length = len(data) * count
    if length >= UNDEFINED:
        raise ConversionError("its pixel data would be too long to send uncompressed")
    vr = b"OB" if int(head.BitsAllocated) <= 8 else b"OW"
    tag = struct.pack(f"{order}HH", PIXEL_DATA >> 16, PIXEL_DATA & 0xFFFF)
    padded = length + (length & 1)
    body.write(tag + (vr + b"\0\0" if explicit else b"") + struct.pack(f"{order}I", padded))
    body.write(data)
    written = 1
    for arr, _ in rest:
        written += 1
        body.write(_frame_bytes(arr, order))
    if written != count:
        raise ConversionError(f"its pixel data held {written} frames, not {count}")
    if length & 1:
        body.write(b"\0")


def _write_bits(
    body: BinaryIO, explicit: bool, order: str, frames: Iterator[Any], count: int
) -> None:
    """1-bit Pixel Data, packed across frame boundaries (PS3.5 8.1.1), as OB (no byte
    order to mind): small enough to hold whole."""
    import numpy
    from pydicom.pixels.utils import pack_bits

    arrays = [arr.ravel() for arr in frames]
    if len(arrays) != count:
        raise ConversionError(f"its pixel data held {len(arrays)} frames, not {count}")
    data = pack_bits(numpy.concatenate(arrays), pad=True)
    tag = struct.pack(f"{order}HH", PIXEL_DATA >> 16, PIXEL_DATA & 0xFFFF)
    body.write(tag + (b"OB\0\0" if explicit else b"") + struct.pack(f"{order}I", len(data)))
    body.write(data)


def _write_encapsulated(
    body: BinaryIO, target: str, frames: Iterator[Any], count: int, opts: dict[str, Any]
) -> None:
    """Pixel Data encapsulated (PS3.5 A.4): an empty offset table, one fragment a frame."""
    from pydicom.pixels.encoders.base import get_encoder

    encoder = get_encoder(target)
    extra: dict[str, Any] = {"use_mct": False} if target == uid.JPEG2000Lossless else {}
    tag = struct.pack("<HH", PIXEL_DATA >> 16, PIXEL_DATA & 0xFFFF)
    body.write(tag + b"OB\0\0" + struct.pack("<I", UNDEFINED))
    body.write(ITEM + struct.pack("<I", 0))
    written = 0
    for arr in frames:
        written += 1
        try:
            encoded = encoder.encode(arr, **opts, **extra)
        except Exception as exc:
            raise ConversionError(f"{name(target)} encoding failed: {_said(exc)}") from exc
        if len(encoded) & 1:
            encoded += b"\0"
        body.write(ITEM + struct.pack("<I", len(encoded)))
        body.write(encoded)
    if written != count:
        raise ConversionError(f"its pixel data held {written} frames, not {count}")
    body.write(SEQUENCE_END + struct.pack("<I", 0))


class _Deflating:
    """A write-only file that deflates what it is given (PS3.5 A.5: raw deflate, padded
    to an even length: peers take no odd-length data set)."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.zip = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        self.count = 0
        self.deflated = 0

    def write(self, data: bytes) -> int:
        self.count += len(data)
        self._out(self.zip.compress(data))
        return len(data)

    def _out(self, data: bytes) -> None:
        self.deflated += len(data)
        self.raw.write(data)

    def tell(self) -> int:
        return self.count

    def close(self) -> None:
        self._out(self.zip.flush())
        if self.deflated & 1:
            self._out(b"\0")


def verify(original: Path, converted: Path) -> None:
    """Raise ConversionError unless ``converted`` decodes to the very pixels of
    ``original``, frame by frame (a lossless encoding checked before it is sent)."""
    import numpy
    from pydicom.pixels.utils import iter_pixels

    pairs = zip_longest(iter_pixels(original), iter_pixels(converted))
    for number, (before, after) in enumerate(pairs, 1):
        if before is None or after is None:
            raise ConversionError("its encoding holds a different number of frames")
        if before.shape != after.shape or not numpy.array_equal(before, after):
            raise ConversionError(f"its encoding does not decode to the original (frame {number})")
