"""Converting stored files between transfer syntaxes (agent/dicom/transcode.py): pixels
equal to pydicom's decoding of the original, lossy stays lossy, the source never changes,
and a missing codec is a failure that says which.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread, uid
from pydicom.data import get_testdata_file
from pydicom.pixels.decoders.base import get_decoder

from agent.dicom import codecs, transcode
from agent.dicom.codecs import ConversionError


def _sample(name: str) -> Path:
    found = get_testdata_file(name)
    assert found is not None, name
    return Path(str(found))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _pixels(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dcmread(path).pixel_array


@pytest.fixture
def hidden_jpeg_ls(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """pydicom's JPEG-LS decoder and encoder with no plugin, as where pyjpegls has no wheel."""
    from pydicom.pixels.encoders.base import get_encoder

    for syntax in (uid.JPEGLSLossless, uid.JPEGLSNearLossless):
        monkeypatch.setattr(get_decoder(syntax), "_available", {})
    monkeypatch.setattr(get_encoder(uid.JPEGLSLossless), "_available", {})
    codecs.forget()
    yield
    monkeypatch.undo()
    codecs.forget()


@pytest.mark.parametrize(
    ("name", "target"),
    [
        ("CT_small.dcm", uid.JPEGLSLossless),
        ("CT_small.dcm", uid.RLELossless),
        ("CT_small.dcm", uid.DeflatedExplicitVRLittleEndian),
        ("MR_small_bigendian.dcm", uid.ExplicitVRLittleEndian),
        ("JPEG2000.dcm", uid.ExplicitVRLittleEndian),
        ("examples_ybr_color.dcm", uid.ExplicitVRLittleEndian),
        ("JPEGLSNearLossless_16.dcm", uid.ExplicitVRLittleEndian),
        ("rtdose_rle.dcm", uid.DeflatedExplicitVRLittleEndian),
        ("SC_rgb_jpeg_gdcm.dcm", uid.ImplicitVRLittleEndian),
        ("MR_small_jp2klossless.dcm", uid.ExplicitVRLittleEndian),
        ("SC_rgb_rle_2frame.dcm", uid.JPEGLSLossless),
        ("liver_expb_1frame.dcm", uid.ExplicitVRLittleEndian),
        ("rtdose_rle.dcm", uid.ExplicitVRBigEndian),
        ("MR_small_implicit.dcm", uid.ExplicitVRBigEndian),
        ("SC_rgb_dcmtk_+eb+cy+s2.dcm", uid.ExplicitVRBigEndian),
        ("liver_1frame.dcm", uid.ExplicitVRBigEndian),
    ],
)
def test_a_conversion_keeps_the_pixels_and_leaves_the_source_alone(
    tmp_path: Path, name: str, target: str
) -> None:
    source = _sample(name)
    before = _digest(source)
    out = tmp_path / "out.dcm"
    transcode.convert(source, target, out)
    assert _digest(source) == before
    converted = dcmread(out)
    assert converted.file_meta.TransferSyntaxUID == target
    assert converted.SOPInstanceUID == dcmread(source).SOPInstanceUID
    assert np.array_equal(_pixels(out), _pixels(source))
    assert not list(tmp_path.glob("*.part"))


def test_decompressed_lossy_data_says_it_is_lossy_and_is_rgb(tmp_path: Path) -> None:
    source = _sample("SC_rgb_dcmtk_+eb+cy+s2.dcm")  # JPEG baseline, YBR_FULL_422
    assert dcmread(source).PhotometricInterpretation == "YBR_FULL_422"
    out = tmp_path / "out.dcm"
    transcode.convert(source, uid.ExplicitVRLittleEndian, out)
    converted = dcmread(out)
    assert converted.PhotometricInterpretation == "RGB"
    assert converted.LossyImageCompression == "01"
    assert "ISO_10918_1" in converted.LossyImageCompressionMethod
    assert float(converted.LossyImageCompressionRatio) > 1


def test_lossy_data_is_never_re_encoded(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="stored lossy as JPEG Baseline"):
        transcode.convert(_sample("SC_rgb_dcmtk_+eb+cy+s2.dcm"), uid.JPEGLSLossless, tmp_path / "o")
    assert not list(tmp_path.iterdir())


def test_nothing_encodes_lossily() -> None:
    assert not set(codecs.ENCODINGS) & codecs.LOSSY
    assert codecs.encode_missing(uid.JPEGBaseline8Bit) is not None
    assert codecs.encode_missing(uid.JPEG2000) is not None


def test_a_missing_decoder_is_named_in_the_failure(tmp_path: Path, hidden_jpeg_ls: None) -> None:
    assert codecs.decode_missing(uid.JPEGLSLossless) == (
        "no JPEG-LS decoder is installed (pyjpegls)"
    )
    with pytest.raises(ConversionError) as raised:
        transcode.convert(_sample("JPEGLSNearLossless_16.dcm"), uid.ExplicitVRLittleEndian,
                          tmp_path / "o")
    assert str(raised.value) == (
        "stored as JPEG-LS Lossy (Near-Lossless) Image Compression, and no JPEG-LS decoder"
        " is installed (pyjpegls)"
    )
    # the others still convert
    transcode.convert(_sample("JPEG2000.dcm"), uid.ExplicitVRLittleEndian, tmp_path / "j2k")


def test_a_missing_encoder_is_named_in_the_failure(tmp_path: Path, hidden_jpeg_ls: None) -> None:
    with pytest.raises(ConversionError, match=r"no JPEG-LS encoder is installed \(pyjpegls\)"):
        transcode.convert(_sample("CT_small.dcm"), uid.JPEGLSLossless, tmp_path / "o")


def test_an_image_without_pixel_data_is_not_compressed(tmp_path: Path) -> None:
    source = _sample("rtplan.dcm")
    with pytest.raises(ConversionError, match="no pixel data to compress"):
        transcode.convert(source, uid.JPEGLSLossless, tmp_path / "o")


def test_this_install_decodes_and_encodes_what_the_conformance_statement_says() -> None:
    assert set(codecs.decodable()) == {
        uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit, uid.JPEGLossless, uid.JPEGLosslessSV1,
        uid.JPEGLSLossless, uid.JPEGLSNearLossless, uid.JPEG2000Lossless, uid.JPEG2000,
        uid.HTJ2KLossless, uid.HTJ2KLosslessRPCL, uid.HTJ2K, uid.RLELossless,
    }
    assert set(codecs.encodable()) == {
        uid.JPEGLSLossless, uid.RLELossless, uid.DeflatedExplicitVRLittleEndian,
    }


def test_an_instance_without_pixel_data_converts_between_uncompressed_syntaxes(
        tmp_path: Path) -> None:
    source = _sample("rtplan.dcm")
    transcode.convert(source, uid.ExplicitVRLittleEndian, tmp_path / "o.dcm")
    converted = dcmread(tmp_path / "o.dcm")
    assert converted.file_meta.TransferSyntaxUID == uid.ExplicitVRLittleEndian
    assert converted.RTPlanLabel == dcmread(source).RTPlanLabel


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "rtdose.dcm", "SC_rgb_rle.dcm"])
def test_a_deflated_data_set_has_an_even_length(tmp_path: Path, name: str) -> None:
    out = tmp_path / "out.dcm"
    transcode.convert(_sample(name), uid.DeflatedExplicitVRLittleEndian, out)
    meta_end = 132 + 12 + int.from_bytes(out.read_bytes()[140:144], "little")
    assert (out.stat().st_size - meta_end) % 2 == 0  # DCMTK refuses odd fragments
    assert np.array_equal(_pixels(out), _pixels(_sample(name)))


def test_lossy_data_decompressed_without_lossy_attributes_gets_them(tmp_path: Path) -> None:
    source = _sample("JPEGLSNearLossless_16.dcm")  # says nothing of its lossy compression
    assert "LossyImageCompression" not in dcmread(source)
    out = tmp_path / "out.dcm"
    transcode.convert(source, uid.ExplicitVRLittleEndian, out)
    converted = dcmread(out)
    assert converted.LossyImageCompression == "01"
    assert converted.LossyImageCompressionMethod == "ISO_14495_1"
    ratio = float(converted.LossyImageCompressionRatio)
    encapsulated = len(dcmread(source).PixelData)  # the codestream and a few item headers
    assert ratio == pytest.approx(len(converted.PixelData) / encapsulated, rel=0.05)


def test_the_private_pydicom_reader_transcode_relies_on_is_still_there() -> None:
    """Contract: pydicom 3.0's ``pixels.utils._array_common`` (private) reads a file up to
    its Pixel Data's value and says how to decode it; transcode.py reads frames from there. An
    upgrade that renames or reshapes it fails here, by name, not in a conversion."""
    from pydicom.pixels.utils import _array_common

    path = _sample("CT_small.dcm")
    with path.open("rb") as stored:
        _, opts = _array_common(stored, [])
        values = np.frombuffer(stored.read(128 * 128 * 2), "<i2")  # left at the first value
    for key in ("bits_allocated", "number_of_frames", "rows", "columns",
                "transfer_syntax_uid"):
        assert key in opts, key
    assert (int(opts["rows"]), int(opts["columns"])) == (128, 128)
    assert np.array_equal(values.reshape(128, 128), _pixels(path))
