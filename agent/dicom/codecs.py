"""Which transfer syntaxes this install can decode and encode, and why not when it cannot.

Decoding and encoding go through pydicom's pixel backends: pylibjpeg with
pylibjpeg-libjpeg (JPEG), pylibjpeg-openjpeg (JPEG 2000, HTJ2K), pyjpegls (JPEG-LS),
pydicom itself (RLE), all of them needing numpy. They are regular dependencies, but a
platform without their wheels (32-bit ARM) installs without them: then the conversions
that need one fail for that instance alone, with the reason in words (``missing``).
Deflate needs zlib only.
"""

from __future__ import annotations

import importlib.util
from functools import cache

from pydicom import uid

NATIVE: tuple[str, ...] = (
    uid.ExplicitVRLittleEndian,
    uid.ImplicitVRLittleEndian,
    uid.ExplicitVRBigEndian,
)
DEFLATED = uid.DeflatedExplicitVRLittleEndian
# the lossless syntaxes this module may encode to: lossy encodings are never offered
ENCODINGS: tuple[str, ...] = (uid.JPEGLSLossless, uid.RLELossless)
LOSSY: frozenset[str] = frozenset(
    (
        uid.JPEGBaseline8Bit,
        uid.JPEGExtended12Bit,
        uid.JPEGLSNearLossless,
        uid.JPEG2000,
        uid.HTJ2K,
    )
)
# the package to install for each compressed syntax, named in the reason a conversion fails
_PACKAGES: dict[str, str] = {
    uid.JPEGBaseline8Bit: "pylibjpeg-libjpeg",
    uid.JPEGExtended12Bit: "pylibjpeg-libjpeg",
    uid.JPEGLossless: "pylibjpeg-libjpeg",
    uid.JPEGLosslessSV1: "pylibjpeg-libjpeg",
    uid.JPEGLSLossless: "pyjpegls",
    uid.JPEGLSNearLossless: "pyjpegls",
    uid.JPEG2000Lossless: "pylibjpeg-openjpeg",
    uid.JPEG2000: "pylibjpeg-openjpeg",
    uid.HTJ2KLossless: "pylibjpeg-openjpeg",
    uid.HTJ2KLosslessRPCL: "pylibjpeg-openjpeg",
    uid.HTJ2K: "pylibjpeg-openjpeg",
    uid.RLELossless: "numpy",
}
_FAMILIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("JPEG-LS", (uid.JPEGLSLossless, uid.JPEGLSNearLossless)),
    ("HTJ2K", (uid.HTJ2KLossless, uid.HTJ2KLosslessRPCL, uid.HTJ2K)),
    ("JPEG 2000", (uid.JPEG2000Lossless, uid.JPEG2000)),
    ("RLE", (uid.RLELossless,)),
    ("JPEG", (uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit, uid.JPEGLossless,
              uid.JPEGLosslessSV1)),
)


class ConversionError(ValueError):
    """An instance cannot be converted; the message says why in words."""


def name(syntax: str) -> str:
    """A transfer syntax's name for a message (its UID if pydicom does not know it)."""
    named = uid.UID(syntax).name
    return named if named else syntax


def family(syntax: str) -> str:
    """The codec family of a compressed syntax (``JPEG 2000``...), for a message."""
    for label, members in _FAMILIES:
        if syntax in members:
            return label
    return name(syntax)


def has_numpy() -> bool:
    """True if numpy is installed (every pixel codec needs it)."""
    return importlib.util.find_spec("numpy") is not None


@cache
def _decodable(syntax: str) -> bool:
    from pydicom.pixels.decoders.base import get_decoder

    try:
        return bool(get_decoder(syntax).is_available)
    except NotImplementedError:
        return False


@cache
def _encodable(syntax: str) -> bool:
    from pydicom.pixels.encoders.base import get_encoder

    try:
        return bool(get_encoder(syntax).is_available)
    except NotImplementedError:
        return False


def decode_missing(syntax: str) -> str | None:
    """None if pixel data stored in ``syntax`` can be decoded here; else why not, in words."""
    if syntax in NATIVE or syntax == DEFLATED:
        return None if has_numpy() else "numpy is not installed"
    if syntax not in _PACKAGES:
        return f"no decoder exists here for {name(syntax)}"
    if not has_numpy():
        return f"no {family(syntax)} decoder is installed (numpy is missing)"
    if not _decodable(syntax):
        return f"no {family(syntax)} decoder is installed ({_PACKAGES[syntax]})"
    return None


def encode_missing(syntax: str) -> str | None:
    """None if pixel data can be encoded in ``syntax`` here; else why not, in words."""
    if syntax in NATIVE or syntax == DEFLATED:
        return None
    if syntax not in ENCODINGS:
        return f"{name(syntax)} is not a syntax this agent encodes to"
    if not has_numpy():
        return f"no {family(syntax)} encoder is installed (numpy is missing)"
    if not _encodable(syntax):
        return f"no {family(syntax)} encoder is installed ({_PACKAGES[syntax]})"
    return None


def decodable() -> list[str]:
    """The compressed syntaxes this install decodes, for the conformance statement."""
    return [s for s in _PACKAGES if decode_missing(s) is None]


def encodable() -> list[str]:
    """The syntaxes this install encodes to (besides the uncompressed ones)."""
    return [s for s in (*ENCODINGS, DEFLATED) if encode_missing(s) is None]


def forget() -> None:
    """Look the plugins up again (tests hide and restore them)."""
    _decodable.cache_clear()
    _encodable.cache_clear()
