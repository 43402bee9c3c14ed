"""medmeta.dicom.pixels against the real DICOM files of pydicom and pydicom-data.

Every positive case is a real file. Bad input is made by damaging real files.
"""

from __future__ import annotations

import io
import logging
import random
import struct
import tracemalloc
import warnings
import zlib
from collections import Counter, defaultdict
from pathlib import Path

import data_store
import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut
from pydicom.uid import (
    RLELossless,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
)

from medmeta.dicom.pixels import (
    PixelResult,
    decode_frame,
    decode_pixels,
    frame_for_display,
    image_geometry,
    read_dicom,
    window_curve,
)
from medmeta.errors import (
    CORRUPT_DICOM,
    IMAGE_TOO_LARGE,
    NO_PIXEL_DATA,
    NOT_DICOM,
    TRUNCATED_DICOM,
    UNDECODABLE_PIXELS,
    Rejected,
)
from medmeta.ingest.config import IngestConfig

PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"
DATA_STORE_FILES = Path(data_store.__file__).parent / "data"
MAX_PIXELS = IngestConfig().max_pixels_per_image
SIZE = 64
ALLOWED_CODES = {NOT_DICOM, CORRUPT_DICOM, TRUNCATED_DICOM, NO_PIXEL_DATA, IMAGE_TOO_LARGE, UNDECODABLE_PIXELS}
REQUIRED_SYNTAXES = {
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian,
    RLELossless, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless,
    JPEG2000Lossless, JPEG2000,
}


def _all_files() -> list[Path]:
    return sorted(path for root in (PYDICOM_FILES, DATA_STORE_FILES) for path in root.rglob("*") if path.is_file())


def _label(path: Path) -> str:
    root = PYDICOM_FILES if path.is_relative_to(PYDICOM_FILES) else DATA_STORE_FILES
    return f"{root.parent.name}/{path.relative_to(root)}"


def _real(name: str) -> Path:
    for root in (PYDICOM_FILES, DATA_STORE_FILES):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(name)


def _ingest(data: bytes, max_pixels: int = MAX_PIXELS) -> PixelResult:
    return decode_pixels(read_dicom(data, max_pixels=max_pixels), size=SIZE)


def _syntax_of(data: bytes) -> str:
    """The transfer syntax named in the file meta, read with plain pydicom (for the tally only)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            meta = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True).file_meta
        return str(meta.get("TransferSyntaxUID", "") or "none")
    except Exception:
        return "unreadable"


def _rejection(data: bytes, max_pixels: int = MAX_PIXELS) -> Rejected:
    with pytest.raises(Rejected) as caught:
        _ingest(data, max_pixels)
    return caught.value


@pytest.fixture(scope="module")
def outcomes() -> dict[str, tuple[str, PixelResult | Rejected]]:
    """Every real file through read_dicom + decode_pixels, with no warning and no pydicom log escaping."""
    results, unexpected = {}, []
    with warnings.catch_warnings(record=True) as escaped:
        warnings.simplefilter("always")
        for path in _all_files():
            data = path.read_bytes()
            try:
                outcome = _ingest(data)
            except Rejected as error:
                outcome = error
            except Exception as exc:  # the one thing that must never happen
                unexpected.append(f"{_label(path)}: {type(exc).__name__}")
                continue
            results[_label(path)] = (_syntax_of(data), outcome)
    assert not unexpected, unexpected
    assert not escaped, [str(w.category) for w in escaped]
    return results


def tally(outcomes) -> dict[str, Counter]:
    """Per transfer syntax: how many decoded, and how many were refused with each code."""
    table: dict[str, Counter] = defaultdict(Counter)
    for syntax, outcome in outcomes.values():
        name = pydicom.uid.UID(syntax).name if syntax.startswith("1.") else syntax
        table[name]["decoded" if isinstance(outcome, PixelResult) else outcome.code] += 1
    return table


def test_every_real_file_decodes_or_is_rejected_with_a_known_code(outcomes):
    assert len(outcomes) > 200
    codes = {outcome.code for _, outcome in outcomes.values() if isinstance(outcome, Rejected)}
    assert codes <= ALLOWED_CODES
    for name, counts in sorted(tally(outcomes).items()):
        print(f"{name:90s} {dict(counts)}")


def test_every_required_transfer_syntax_decodes(outcomes):
    decoded = {syntax for syntax, outcome in outcomes.values() if isinstance(outcome, PixelResult)}
    assert REQUIRED_SYNTAXES <= decoded, sorted(pydicom.uid.UID(s).name for s in REQUIRED_SYNTAXES - decoded)


def test_decoded_images_are_well_formed(outcomes):
    for label, (_, outcome) in outcomes.items():
        if isinstance(outcome, PixelResult):
            array = outcome.array
            assert array.shape == (SIZE, SIZE) and array.dtype == np.float16, label
            assert np.isfinite(array).all() and array.min() >= 0 and array.max() <= 1, label
            assert outcome.pixel_min <= outcome.pixel_max, label
            assert outcome.rows > 0 and outcome.columns > 0 and outcome.frames > 0, label


@pytest.mark.parametrize("name, code", [
    ("MR_truncated.dcm", TRUNCATED_DICOM),
    ("emri_small_jpeg_2k_lossless_too_short.dcm", TRUNCATED_DICOM),
    ("rtplan_truncated.dcm", TRUNCATED_DICOM),
    ("rtplan.dcm", NO_PIXEL_DATA),
    ("waveform_ecg.dcm", NO_PIXEL_DATA),
    ("badVR.dcm", CORRUPT_DICOM),
    ("JPEG-lossy.dcm", UNDECODABLE_PIXELS),
    ("README.txt", NOT_DICOM),
    ("color3d_jpeg_baseline.dcm", IMAGE_TOO_LARGE),  # 480 x 640 x 120 frames x 3 samples
])
def test_known_bad_real_files(name, code):
    assert _rejection(_real(name).read_bytes()).code == code


def test_file_without_meta_decodes():
    """OT-PAL-8-face.dcm has no file meta: it is read with the transfer syntax it was written in."""
    result = _ingest(_real("OT-PAL-8-face.dcm").read_bytes())
    assert result.photometric == "PALETTE COLOR"


# --- decoded values against pydicom -----------------------------------------------------------


def _reference_cases() -> list[Path]:
    """Files plain pydicom decodes, read_dicom accepts, with a transfer syntax in the file."""
    cases = []
    for path in _all_files():
        data = path.read_bytes()
        try:
            read_dicom(data, max_pixels=MAX_PIXELS)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pydicom.dcmread(path).pixel_array
        except Exception:
            continue
        cases.append(path)
    return cases


REFERENCE_CASES = _reference_cases()


def _header(path: Path) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, stop_before_pixels=True)


def _pydicom_middle_frame(path: Path) -> tuple[pydicom.Dataset, np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
        frames = ds.pixel_array
    count = int(ds.get("NumberOfFrames") or 1)
    return ds, frames[count // 2] if count > 1 else frames


def test_reference_cases_cover_every_required_syntax():
    syntaxes = {_header(path).file_meta.TransferSyntaxUID for path in REFERENCE_CASES}
    assert REQUIRED_SYNTAXES <= syntaxes


@pytest.mark.parametrize("path", REFERENCE_CASES, ids=_label)
def test_decoded_frame_equals_pydicom_pixel_array(path):
    _, expected = _pydicom_middle_frame(path)
    frame, _ = decode_frame(read_dicom(path.read_bytes(), max_pixels=MAX_PIXELS))
    np.testing.assert_array_equal(frame, expected)


@pytest.mark.parametrize("path", REFERENCE_CASES, ids=_label)
def test_frame_for_display_follows_pydicom(path):
    """Modality LUT / rescale, then VOI LUT or window, as pydicom; MONOCHROME1 inverted; colour to luma."""
    ds, frame = _pydicom_middle_frame(path)
    if "SharedFunctionalGroupsSequence" in ds:
        pytest.skip("enhanced multi-frame: see test_enhanced_functional_groups_are_used")
    display = frame_for_display(read_dicom(path.read_bytes(), max_pixels=MAX_PIXELS))
    photometric = ds.PhotometricInterpretation
    if photometric == "PALETTE COLOR":
        expected = apply_color_lut(frame, ds).astype(np.float64) @ [0.299, 0.587, 0.114]
    elif frame.ndim == 3:
        expected = frame.astype(np.float64) @ [0.299, 0.587, 0.114]
    else:
        expected = _pydicom_voi(ds, apply_modality_lut(frame, ds).astype(np.float64))
        if photometric == "MONOCHROME1":
            expected = expected.min() + expected.max() - expected
    assert display.dtype == np.float32 and display.shape == frame.shape[:2]
    np.testing.assert_allclose(display, expected, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(expected).max()))


def _pydicom_voi(ds, rescaled: np.ndarray) -> np.ndarray:
    """pydicom's VOI LUT or window (a window scaled to [0, 1]); none when it fails or leaves no contrast."""
    if "VOILUTSequence" not in ds and "WindowCenter" not in ds:
        return rescaled
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "a VOI LUT on a float input array": integral floats here
            windowed = apply_voi_lut(rescaled, ds).astype(np.float64)
    except ValueError:
        return rescaled
    if "VOILUTSequence" not in ds:
        low, high = _pydicom_window_range(ds)
        windowed = (windowed - low) / (high - low)
    return windowed if windowed.max() > windowed.min() else rescaled


def test_enhanced_functional_groups_are_used():
    """eCT_Supplemental.dcm keeps its rescale in the functional groups: pixel_min/max are in HU."""
    path = _real("eCT_Supplemental.dcm")
    ds, frame = _pydicom_middle_frame(path)
    transform = ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
    slope, intercept = float(transform.RescaleSlope), float(transform.RescaleIntercept)
    result = _ingest(path.read_bytes())
    assert (result.pixel_min, result.pixel_max) == (frame.min() * slope + intercept, frame.max() * slope + intercept)


WINDOWED_CASES = [path for path in REFERENCE_CASES if "WindowCenter" in _header(path)]


@pytest.mark.parametrize("path", WINDOWED_CASES, ids=_label)
def test_window_matches_pydicom_apply_voi_lut(path):
    """The same curve as pydicom's windowing; ours maps onto [0, 1] instead of the stored range."""
    ds, frame = _pydicom_middle_frame(path)
    if ds.get("VOILUTSequence"):
        pytest.skip("a VOI LUT Sequence is applied by pydicom itself")
    rescaled = apply_modality_lut(frame, ds)
    curve = window_curve(ds)
    try:
        expected = apply_voi_lut(rescaled, ds)
    except ValueError:
        assert curve is None  # a window pydicom refuses is skipped
        return
    low, high = _pydicom_window_range(ds)
    windowed = curve(rescaled.astype(np.float32))
    np.testing.assert_allclose(windowed * (high - low) + low, expected, rtol=1e-4, atol=1e-4 * (high - low))


def _pydicom_window_range(ds) -> tuple[float, float]:
    """The output range pydicom's apply_windowing maps a window onto."""
    bits = ds.BitsStored
    low, high = (0, 2**bits - 1) if ds.PixelRepresentation == 0 else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        low, high = low * ds.RescaleSlope + ds.RescaleIntercept, high * ds.RescaleSlope + ds.RescaleIntercept
    return float(low), float(high)


@pytest.mark.parametrize("name", ["CT_small.dcm", "693_UNCI.dcm", "RG1_UNCI.dcm", "US1_UNCI.dcm", "emri_small.dcm",
                                  "MR_small_jp2klossless.dcm", "OBXXXX1A.dcm", "SC_rgb_small_odd.dcm"])
def test_normalised_image_equals_normalise_then_resize(name):
    """The pipeline resizes before normalising (cheaper); the result is the same image."""
    from PIL import Image

    ds = read_dicom(_real(name).read_bytes(), max_pixels=MAX_PIXELS)
    display = frame_for_display(ds).astype(np.float64)
    normalised = ((display - display.min()) / (display.max() - display.min())).astype(np.float32)
    rows, columns = normalised.shape
    if rows % SIZE == 0 and columns % SIZE == 0:
        expected = normalised.reshape(SIZE, rows // SIZE, SIZE, columns // SIZE).mean(axis=(1, 3))
    else:
        expected = np.asarray(Image.fromarray(normalised).resize((SIZE, SIZE), Image.Resampling.BILINEAR,
                                                                 reducing_gap=2.0))
    np.testing.assert_allclose(decode_pixels(ds, size=SIZE).array.astype(np.float32), expected, atol=2e-3)


def test_monochrome1_is_inverted_so_that_high_is_bright():
    ds = read_dicom(_real("RG1_UNCI.dcm").read_bytes(), max_pixels=MAX_PIXELS)
    _, stored = _pydicom_middle_frame(_real("RG1_UNCI.dcm"))
    display = frame_for_display(ds)
    assert display[np.unravel_index(np.argmax(stored), stored.shape)] == display.min()


def test_a_constant_image_becomes_zeros_not_nan():
    ds = read_dicom(_real("CT_small.dcm").read_bytes(), max_pixels=MAX_PIXELS)
    ds.PixelData = np.full((ds.Rows, ds.Columns), 100, dtype=np.int16).tobytes()
    result = decode_pixels(ds, size=SIZE)
    assert not result.array.any() and result.pixel_min == result.pixel_max


def test_geometry_and_photometric_come_from_the_header():
    result = _ingest(_real("emri_small.dcm").read_bytes())
    assert (result.rows, result.columns, result.frames, result.photometric) == (64, 64, 10, "MONOCHROME2")
    assert image_geometry(read_dicom(_real("SC_rgb.dcm").read_bytes(), max_pixels=MAX_PIXELS)).samples == 3


# --- damaged real files -----------------------------------------------------------------------


def _rewrite(path: Path, change) -> bytes:
    ds = pydicom.dcmread(path)
    change(ds)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm",
                                  "JPEG2000.dcm", "emri_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm", "image_dfl.dcm",
                                  "693_UNCI.dcm"])
@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.9])
def test_a_cut_file_is_truncated(name, fraction):
    """A cut exactly between two elements before the pixel data looks like a file without pixels."""
    data = _real(name).read_bytes()
    cut = int(len(data) * fraction)
    error = _rejection(data[:cut])
    if error.code == NO_PIXEL_DATA:
        assert cut in _element_ends(data), error.reason
    else:
        assert error.code == TRUNCATED_DICOM, error.reason


def _element_ends(data: bytes) -> set[int]:
    ds = pydicom.dcmread(io.BytesIO(data))
    return {element.value_tell + element.length for element in ds.elements() if hasattr(element, "value_tell")}


def test_a_file_cut_inside_the_pixel_data_by_one_byte_is_truncated():
    data = _real("CT_small.dcm").read_bytes()
    assert _rejection(data[:-1]).code == TRUNCATED_DICOM


def test_text_named_dcm_and_random_bytes_are_not_dicom():
    assert _rejection(b"patient,age\nsomeone,42\n" * 20).code == NOT_DICOM
    assert _rejection(random.Random(7).randbytes(4096)).code == NOT_DICOM
    assert _rejection(b"").code == NOT_DICOM


def test_dicm_preamble_with_garbage_is_corrupt():
    garbage = random.Random(11).randbytes(4096)
    assert _rejection(b"\0" * 128 + b"DICM" + garbage).code == CORRUPT_DICOM


def test_a_real_file_without_pixel_data():
    data = _rewrite(_real("CT_small.dcm"), lambda ds: delattr(ds, "PixelData"))
    assert _rejection(data).code == NO_PIXEL_DATA


def test_a_header_claiming_60000_squared_is_refused_without_allocating():
    def enlarge(ds):
        ds.Rows = ds.Columns = 60000

    data = _rewrite(_real("CT_small.dcm"), enlarge)
    tracemalloc.start()
    try:
        error = _rejection(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert error.code == IMAGE_TOO_LARGE
    assert error.message == "header claims 60000 x 60000 pixels x 1 frames, over the limit of 67108864"
    assert peak < 50 * 1024**2  # 60000 x 60000 x 2 bytes would be 7.2 GB


def test_a_deflated_data_set_that_inflates_without_end_is_refused():
    """image_dfl.dcm's meta followed by a deflate stream of 80 MB of zeros."""
    data = _real("image_dfl.dcm").read_bytes()
    assert pydicom.dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros = bytes(1024 * 1024)
    bomb = b"".join(compressor.compress(zeros) for _ in range(80)) + compressor.flush()
    tracemalloc.start()
    try:
        error = _rejection(data[:_meta_end(data)] + bomb, max_pixels=1000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert error.code == IMAGE_TOO_LARGE and peak < 50 * 1024**2


def _meta_end(data: bytes) -> int:
    """Where the file meta group ends: 132 + 12 + its group length."""
    (group_length,) = struct.unpack_from("<I", data, 132 + 8)
    return 132 + 12 + group_length


@pytest.mark.parametrize("name", ["SC_rgb_jpeg_dcmtk.dcm", "JPGExtended.dcm", "JPEG2000.dcm", "MR_small_RLE.dcm"])
def test_compressed_fragments_replaced_by_garbage_are_undecodable(name):
    noise = random.Random(3)

    def scramble(ds):
        ds.PixelData = _scramble_fragments(ds.PixelData, noise)

    assert _rejection(_rewrite(_real(name), scramble)).code == UNDECODABLE_PIXELS


def _scramble_fragments(value: bytes, noise: random.Random) -> bytes:
    """Keep the item headers and the offset table, replace every fragment's bytes."""
    out, offset, item = bytearray(), 0, 0
    while offset + 8 <= len(value):
        header = value[offset:offset + 8]
        (length,) = struct.unpack_from("<I", header, 4)
        body = value[offset + 8:offset + 8 + length]
        out += header + (body if item == 0 else noise.randbytes(length))
        offset += 8 + length
        item += 1
    return bytes(out)


def test_messages_never_quote_header_text(outcomes):
    """No rejection message carries a string value of the file it is about."""
    for label, (_, outcome) in outcomes.items():
        if isinstance(outcome, Rejected):
            path = (PYDICOM_FILES if label.startswith("pydicom/") else DATA_STORE_FILES) / label.split("/", 1)[1]
            for text in _header_texts(path):
                assert text not in outcome.message, (label, outcome.message)


def _header_texts(path: Path) -> set[str]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
        return {str(e.value) for e in ds if e.VR in ("PN", "LO", "SH", "CS", "DA", "UI") and len(str(e.value)) >= 4}
    except Exception:
        return set()


def test_pydicom_logs_nothing(caplog):
    with caplog.at_level(logging.DEBUG):
        for name in ("MR_truncated.dcm", "badVR.dcm", "JPEG-lossy.dcm", "OT-PAL-8-face.dcm"):
            try:
                _ingest(_real(name).read_bytes())
            except Rejected:
                pass
    assert not [r for r in caplog.records if r.name.startswith("pydicom")]


def test_an_unknown_transfer_syntax_is_undecodable():
    def relabel(ds):
        ds.file_meta.TransferSyntaxUID = "1.2.3.4.5"

    assert _rejection(_rewrite(_real("CT_small.dcm"), relabel)).code == UNDECODABLE_PIXELS


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "JPEG2000.dcm",
                                  "emri_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm", "image_dfl.dcm", "OBXXXX1A_rle.dcm",
                                  "eCT_Supplemental.dcm"])
def test_damaged_bytes_never_raise_anything_but_rejected(name):
    """Random byte changes, mostly in the header: decoded, or refused with a known code."""
    original = _real(name).read_bytes()
    noise = random.Random(name)
    for _ in range(60):
        damaged = bytearray(original)
        for _ in range(noise.choice([1, 2, 4, 8])):
            damaged[noise.randrange(min(len(damaged), noise.choice([400, 2000, len(damaged)])))] = noise.randrange(256)
        try:
            _ingest(bytes(damaged))
        except Rejected as error:
            assert error.code in ALLOWED_CODES
