"""DICOM bytes to a small normalised image: read safely, decode one frame, normalise, resize.

``read_dicom`` refuses what can not or must not be decoded (not DICOM, corrupt, truncated,
no pixels, too many pixels) from the header alone, before any pixel is decoded.
``decode_pixels`` decodes the middle frame and returns a ``size`` x ``size`` float16 image in
[0, 1]. Messages never quote values from the file: pydicom's warnings, log lines and
exception texts can, so they are kept out.
"""

from __future__ import annotations

import io
import logging
import struct
import threading
import warnings
import zlib
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi,
    as_pixel_options,
    get_decoder,
)
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
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
from medmeta.landing.sniff import DICOM_VRS, has_dicom_preamble, looks_like_raw_dicom

logging.getLogger("pydicom").setLevel(logging.CRITICAL)  # its log lines can quote values

PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_FLOAT_PIXEL_BITS = {"FloatPixelData": 32, "DoubleFloatPixelData": 64}
KNOWN_PHOTOMETRICS = frozenset((
    "MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_422",
    "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT", "HSV", "ARGB", "CMYK", "XYB",
))
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601, as YCbCr uses
_HEADER_MARGIN_BYTES = 64 * 1024**2  # a deflated data set may inflate to its pixels plus this


@dataclass(frozen=True)
class PixelResult:
    """One decoded image, ready to cache."""

    array: np.ndarray  # float16, (size, size), values in [0, 1]
    pixel_min: float  # of the modality-rescaled frame, before VOI and normalisation
    pixel_max: float
    rows: int
    columns: int
    frames: int
    photometric: str  # a known Photometric Interpretation, or "OTHER"


@dataclass(frozen=True)
class Geometry:
    """The image pixel description from the header, checked to be whole numbers."""

    rows: int
    columns: int
    frames: int
    samples: int
    bits_allocated: int
    photometric: str

    @property
    def pixel_count(self) -> int:
        return self.rows * self.columns * self.frames * self.samples


# ---------------------------------------------------------------------------------------------
# Reading


def read_dicom(data: bytes, *, max_pixels: int) -> Dataset:
    """Parse a DICOM file held in ``data``; raise ``Rejected`` when it can not be decoded."""
    layout = _read_layout(data)
    if layout.deflated:
        _check_deflated_body(data, layout.body_offset, max_pixels)
    with _quiet():
        ds = _parse(data, layout)
        try:
            _check_image(ds, layout, max_pixels)
        except Rejected:
            raise
        except Exception as exc:  # a header pydicom can not interpret
            raise Rejected(CORRUPT_DICOM, f"the image header can not be read ({type(exc).__name__})") from None
    return ds


def _check_image(ds: Dataset, layout: "_Layout", max_pixels: int) -> None:
    keyword = _pixel_keyword(ds)
    if keyword is None:
        raise _no_pixel_data(ds)
    geometry = image_geometry(ds)
    _check_pixel_count(geometry, max_pixels)
    _fill_missing_transfer_syntax(ds, layout)
    _check_pixel_data_complete(ds, keyword, geometry)


@dataclass(frozen=True)
class _Layout:
    """Where the data set starts and how it is encoded."""

    has_preamble: bool
    body_offset: int
    transfer_syntax: str | None
    implicit_vr: bool
    little_endian: bool

    @property
    def deflated(self) -> bool:
        return self.transfer_syntax == DeflatedExplicitVRLittleEndian


def _read_layout(data: bytes) -> _Layout:
    """Check the file signature and read the file meta group (always explicit VR little endian)."""
    has_preamble = has_dicom_preamble(data)
    if not has_preamble and not looks_like_raw_dicom(data):
        raise Rejected(NOT_DICOM, "no DICM preamble and no DICOM data set at the start of the file")
    start = 132 if has_preamble else 0
    body_offset, transfer_syntax = _read_meta_group(data, start)
    if has_preamble and body_offset == start:
        raise Rejected(CORRUPT_DICOM, "no file meta information after the DICM preamble")
    if transfer_syntax is None:
        implicit_vr, little_endian = _guess_encoding(data, body_offset)
    else:
        implicit_vr = transfer_syntax == ImplicitVRLittleEndian
        little_endian = transfer_syntax != ExplicitVRBigEndian
    return _Layout(has_preamble, body_offset, transfer_syntax, implicit_vr, little_endian)


def _read_meta_group(data: bytes, offset: int) -> tuple[int, str | None]:
    """Walk the group 0x0002 elements from ``offset``; return where they end and the transfer syntax."""
    transfer_syntax, declared_end = None, None
    end = len(data)
    while offset + 8 <= end:
        group, element = struct.unpack_from("<HH", data, offset)
        if group != 0x0002:
            break
        header, length = _meta_element_header(data, offset)
        value_end = offset + header + length
        if length == _UNDEFINED or value_end > end:
            raise _meta_cut()
        if element == 0x0000 and length == 4:
            declared_end = value_end + struct.unpack_from("<I", data, offset + header)[0]
        elif element == 0x0010:
            transfer_syntax = data[offset + header:value_end].rstrip(b"\x00 ").decode("ascii", "replace")
        offset = value_end
    if offset < end <= offset + 8 and b"\x02\x00".startswith(data[offset:offset + 2]):
        raise _meta_cut()  # a partial element header
    if declared_end is not None and offset < declared_end and declared_end > end:
        raise _meta_cut()
    return offset, transfer_syntax


def _meta_element_header(data: bytes, offset: int) -> tuple[int, int]:
    try:
        header, length = _explicit_header(data, offset, "<")
    except _Cut:
        raise _meta_cut() from None
    if header is None:  # some writers use implicit VR here
        header, length = 8, struct.unpack_from("<I", data, offset + 4)[0]
    return header, length


def _meta_cut() -> Rejected:
    return Rejected(TRUNCATED_DICOM, "the file ends inside its file meta information")


def _guess_encoding(data: bytes, offset: int) -> tuple[bool, bool]:
    """Implicit VR and byte order of a data set that has no transfer syntax, from its first element."""
    little_endian = data[offset:offset + 2] != b"\x00\x08"
    implicit_vr = data[offset + 4:offset + 6] not in DICOM_VRS
    return implicit_vr, little_endian


def _check_deflated_body(data: bytes, offset: int, max_pixels: int) -> None:
    """Inflate in bounded steps, discarding the output, so a deflate bomb is refused unread."""
    limit = max_pixels * 8 + _HEADER_MARGIN_BYTES
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    produced = 0
    pending = memoryview(data)[offset:]
    try:
        while pending and not inflater.eof:
            produced += len(inflater.decompress(pending, 1024 * 1024))
            pending = inflater.unconsumed_tail
            if produced > limit:
                raise Rejected(IMAGE_TOO_LARGE, f"the deflated data set inflates past {limit} bytes")
    except zlib.error:
        raise Rejected(CORRUPT_DICOM, "the deflated data set can not be inflated") from None
    if not inflater.eof:
        raise Rejected(TRUNCATED_DICOM, "the deflated data set ends early")


def _parse(data: bytes, layout: _Layout) -> Dataset:
    """dcmread, then tell a cut file from a corrupt one whenever something looks wrong.

    pydicom reads a cut file without complaint in many places (a short last value, a data set
    that simply stops, a warning for a missing delimiter), so any sign of trouble sends the file
    through a scan of its element structure. A file that is whole but that the scan finds odd is
    only refused when pydicom could not make sense of it either.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
            short_value = _has_short_value(ds)
            no_pixels = _pixel_keyword(ds) is None
        except Exception as exc:
            _raise_if_cut(data, layout)
            code = CORRUPT_DICOM if layout.has_preamble else NOT_DICOM
            raise Rejected(code, f"the data set can not be parsed ({type(exc).__name__})") from None
    if caught or short_value or no_pixels:
        verdict = _raise_if_cut(data, layout)
        if verdict == _BROKEN and (short_value or no_pixels):
            code = CORRUPT_DICOM if layout.has_preamble else NOT_DICOM
            raise Rejected(code, "the data set structure is not valid DICOM")
    return ds


def _pixel_keyword(ds: Dataset) -> str | None:
    return next((keyword for keyword in PIXEL_KEYWORDS if keyword in ds), None)


def _no_pixel_data(ds: Dataset) -> Rejected:
    if "Rows" in ds and "Columns" in ds:
        return Rejected(NO_PIXEL_DATA, "the data set describes an image but has no Pixel Data element "
                                       "(the file may have been cut short)")
    return Rejected(NO_PIXEL_DATA, "the data set has no Pixel Data element")


def _has_short_value(ds: Dataset) -> bool:
    """True when the last top-level value holds fewer bytes than its header declares.

    Reading stops at the end of the file, so only the last element read can be short.
    """
    last_tag = next(reversed(ds.keys()), None)  # the data set keeps its elements in file order
    if last_tag is None:
        return False
    element = ds.get_item(last_tag)
    if not isinstance(element, RawDataElement) or element.length == _UNDEFINED or element.value is None:
        return False
    return len(element.value) < element.length


def image_geometry(ds: Dataset) -> Geometry:
    """Rows, columns, frames, samples and bits from the header; ``Rejected`` when unusable."""
    keyword = _pixel_keyword(ds)
    rows = _header_int(ds, "Rows")
    columns = _header_int(ds, "Columns")
    frames = _header_int(ds, "NumberOfFrames", default=1) or 1
    samples = _header_int(ds, "SamplesPerPixel", default=1)
    bits = _FLOAT_PIXEL_BITS.get(keyword) or _header_int(ds, "BitsAllocated")
    for name, value in (("Rows", rows), ("Columns", columns), ("Bits Allocated", bits)):
        if value is None:
            raise Rejected(UNDECODABLE_PIXELS, f"the pixel description has no {name}")
    if min(rows, columns, frames, samples, bits) < 1:
        raise Rejected(UNDECODABLE_PIXELS, "the pixel description holds a zero or negative size")
    return Geometry(rows, columns, frames, samples, bits, photometric_name(ds))


def _header_int(ds: Dataset, keyword: str, default: int | None = None) -> int | None:
    try:
        value = ds.get(keyword)
    except Exception as exc:
        raise Rejected(CORRUPT_DICOM, f"{keyword} can not be read ({type(exc).__name__})") from None
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise Rejected(CORRUPT_DICOM, f"{keyword} is not a whole number") from None


def photometric_name(ds: Dataset) -> str:
    """The Photometric Interpretation when it is a known term, else "OTHER" (never free text)."""
    value = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    if not value:
        return "MONOCHROME2"
    return value if value in KNOWN_PHOTOMETRICS else "OTHER"


def _check_pixel_count(geometry: Geometry, max_pixels: int) -> None:
    if geometry.pixel_count > max_pixels:
        samples = f" x {geometry.samples} samples" if geometry.samples > 1 else ""
        raise Rejected(
            IMAGE_TOO_LARGE,
            f"header claims {geometry.rows} x {geometry.columns} pixels x {geometry.frames} frames{samples}, "
            f"over the limit of {max_pixels}",
        )


def _fill_missing_transfer_syntax(ds: Dataset, layout: _Layout) -> None:
    """Give a file without meta the transfer syntax it was read with, so its pixels can be decoded."""
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        meta = ds.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" in meta:
        return
    if layout.implicit_vr:
        meta.TransferSyntaxUID = ImplicitVRLittleEndian
    else:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian if layout.little_endian else ExplicitVRBigEndian


def _check_pixel_data_complete(ds: Dataset, keyword: str, geometry: Geometry) -> None:
    value = ds.get_item(keyword).value or b""
    if keyword == "PixelData" and _is_encapsulated(ds.file_meta.TransferSyntaxUID):
        _check_fragments(value)
        return
    expected = _native_length(geometry, keyword)
    if len(value) < expected:
        raise Rejected(TRUNCATED_DICOM, f"the pixel data holds {len(value)} bytes, the header needs {expected}")


def _is_encapsulated(transfer_syntax: str) -> bool:
    try:
        return UID(transfer_syntax).is_encapsulated
    except ValueError:
        raise Rejected(UNDECODABLE_PIXELS, "the transfer syntax is not a known one") from None


def _native_length(geometry: Geometry, keyword: str) -> int:
    """Bytes of native pixel data the header asks for (as pydicom computes it)."""
    samples = geometry.samples
    if keyword == "PixelData" and geometry.photometric == "YBR_FULL_422" and samples == 3:
        samples = 2  # chroma subsampled horizontally
    sample_count = geometry.rows * geometry.columns * geometry.frames * samples
    return (sample_count * geometry.bits_allocated + 7) // 8


def _check_fragments(value: bytes) -> None:
    """Encapsulated pixel data: every item must lie whole inside the value, and one must hold data."""
    offset, items = 0, 0
    while offset + 8 <= len(value):
        group, element, length = struct.unpack_from("<HHI", value, offset)
        if (group, element) != (0xFFFE, 0xE000):
            return  # not an item: let the decoder judge
        offset += 8 + length
        if offset > len(value):
            raise Rejected(TRUNCATED_DICOM, "an encapsulated pixel data fragment ends early")
        items += 1
    if offset != len(value):
        raise Rejected(TRUNCATED_DICOM, "the encapsulated pixel data ends inside an item header")
    if items < 2:
        raise Rejected(NO_PIXEL_DATA, "the encapsulated pixel data holds no fragments")


# ---------------------------------------------------------------------------------------------
# Structure scan: is the file cut short, or is it corrupt? Only run when something looks wrong.

_LONG_LENGTH_VRS = frozenset(vr.encode() for vr in "OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD


_WHOLE, _BROKEN = "whole", "broken"


class _Cut(Exception):
    """The structure runs past the end of the file."""


class _Broken(Exception):
    """The structure is not a DICOM data set."""


def _raise_if_cut(data: bytes, layout: _Layout) -> str:
    """Raise TRUNCATED_DICOM when the element structure runs past the end; else return a verdict."""
    if layout.deflated:
        return _WHOLE  # its stream was checked whole before parsing
    scan = _StructureScan(data, layout.little_endian)
    try:
        scan.data_set(layout.body_offset, layout.implicit_vr, in_item=False)
    except _Cut:
        raise Rejected(TRUNCATED_DICOM, "the file ends inside a data element") from None
    except (_Broken, RecursionError):
        return _BROKEN
    return _WHOLE


class _StructureScan:
    """Walk element headers and item delimiters without reading values."""

    def __init__(self, data: bytes, little_endian: bool):
        self.data = data
        self.end = len(data)
        self.order = "<" if little_endian else ">"

    def data_set(self, offset: int, implicit_vr: bool, in_item: bool) -> int:
        previous_tag = -1
        while offset < self.end:
            tag, header, length, vr = self._element_header(offset, implicit_vr)
            if tag == _ITEM_END and in_item:
                return offset + 8
            if tag <= previous_tag or tag >> 16 == 0xFFFE:
                raise _Broken
            previous_tag = tag
            offset += header
            if length == _UNDEFINED:
                offset = self.items(offset, implicit_vr or vr == b"UN")
            else:
                offset = self._skip(offset, length)
        if in_item:
            raise _Cut  # no item delimiter before the end of the file
        return offset

    def items(self, offset: int, implicit_vr: bool) -> int:
        while True:
            if offset + 8 > self.end:
                raise _Cut
            group, element, length = struct.unpack_from(self.order + "HHI", self.data, offset)
            tag = group << 16 | element
            offset += 8
            if tag == _SEQUENCE_END:
                return offset
            if tag != _ITEM:
                raise _Broken
            if length == _UNDEFINED:
                offset = self.data_set(offset, implicit_vr, in_item=True)
            else:
                offset = self._skip(offset, length)

    def _element_header(self, offset: int, implicit_vr: bool) -> tuple[int, int, int, bytes | None]:
        if offset + 8 > self.end:
            raise _Cut
        group, element = struct.unpack_from(self.order + "HH", self.data, offset)
        tag = group << 16 | element
        if implicit_vr or group == 0xFFFE:
            return tag, 8, struct.unpack_from(self.order + "I", self.data, offset + 4)[0], None
        header, length = _explicit_header(self.data, offset, self.order)
        if header is None:
            raise _Broken
        if offset + header > self.end:
            raise _Cut
        return tag, header, length, self.data[offset + 4:offset + 6]

    def _skip(self, offset: int, length: int) -> int:
        offset += length
        if offset > self.end:
            raise _Cut
        return offset


def _explicit_header(data: bytes, offset: int, order: str) -> tuple[int | None, int]:
    """Header size and value length of an explicit-VR element; (None, 0) when the VR is not one."""
    vr = data[offset + 4:offset + 6]
    if vr in _LONG_LENGTH_VRS:
        if offset + 12 > len(data):
            raise _Cut
        return 12, struct.unpack_from(order + "I", data, offset + 8)[0]
    if vr in DICOM_VRS:
        return 8, struct.unpack_from(order + "H", data, offset + 6)[0]
    return None, 0


# ---------------------------------------------------------------------------------------------
# Decoding


def decode_pixels(ds: Dataset, *, size: int) -> PixelResult:
    """Decode the middle frame of ``ds`` (from ``read_dicom``) to a ``size`` x ``size`` float16 image."""
    try:
        with _quiet():
            geometry = image_geometry(ds)
            modality, display = _planes(ds, geometry)
            array = _normalised_image(display, size)
    except Rejected:
        raise
    except Exception as exc:
        raise Rejected(UNDECODABLE_PIXELS, f"the pixel data can not be decoded ({type(exc).__name__})") from None
    return PixelResult(array, modality.low, modality.high, geometry.rows, geometry.columns, geometry.frames,
                       geometry.photometric)


def frame_for_display(ds: Dataset) -> np.ndarray:
    """The middle frame before normalisation: rescaled, windowed, MONOCHROME1 inverted, one channel.

    A new float32 array of shape (rows, columns); for tests, and for people who want to look.
    """
    with _quiet():
        return _planes(ds, image_geometry(ds))[1].materialise()


def decode_frame(ds: Dataset, index: int | None = None, geometry: Geometry | None = None) -> tuple[np.ndarray, str]:
    """Frame ``index`` (default: the middle one) as ``ds.pixel_array`` holds it, and its colour space.

    Only that frame is decoded, and it may be a read-only view on the Pixel Data. pydicom
    converts YBR_FULL and YBR_FULL_422 (and JPEG 2000's YBR_ICT / YBR_RCT) to RGB and reports
    the colour space it returns.
    """
    geometry = geometry or image_geometry(ds)
    if index is None:
        index = geometry.frames // 2
    frame = _native_grayscale_frame(ds, geometry, index)
    if frame is not None:
        return frame, geometry.photometric
    decoder = get_decoder(ds.file_meta.TransferSyntaxUID)
    frame, properties = decoder.as_array(ds, index=index, **as_pixel_options(ds))
    photometric = str(properties.get("photometric_interpretation") or geometry.photometric).strip().upper()
    return frame, photometric


_LITTLE_ENDIAN_NATIVE = frozenset((ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian))


def _native_grayscale_frame(ds: Dataset, geometry: Geometry, index: int) -> np.ndarray | None:
    """Native little-endian one-sample 8/16/32-bit pixels as a view, without pydicom's overhead.

    pydicom's decoder costs about 0.1 ms a call and copies the frame; this is the common case
    (CT, MR, CR, DX) done the same way: unused high bits are shifted out as pydicom does, but
    only when they hold something. None for any other case, which pydicom decodes.
    """
    bits = geometry.bits_allocated
    if geometry.samples != 1 or bits not in (8, 16, 32) or "PixelData" not in ds:
        return None
    if ds.file_meta.TransferSyntaxUID not in _LITTLE_ENDIAN_NATIVE:
        return None
    signed = _header_int(ds, "PixelRepresentation", default=0) == 1
    bits_stored = _header_int(ds, "BitsStored", default=bits)
    if not 1 <= bits_stored <= bits:
        return None
    pixels = geometry.rows * geometry.columns
    dtype = np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")
    frame = np.frombuffer(ds.PixelData, dtype, count=pixels, offset=index * pixels * dtype.itemsize)
    frame = frame.reshape(geometry.rows, geometry.columns)
    if bits_stored < bits and not _fits_in_bits(frame, bits_stored, signed):
        frame = np.left_shift(frame, bits - bits_stored)
        np.right_shift(frame, bits - bits_stored, out=frame)
    return frame


def _fits_in_bits(frame: np.ndarray, bits_stored: int, signed: bool) -> bool:
    """True when no value uses a bit above Bits Stored, so shifting them out changes nothing."""
    if signed:
        limit = 1 << (bits_stored - 1)
        return int(frame.min()) >= -limit and int(frame.max()) < limit
    return int(frame.max()) < 1 << bits_stored


class _Scratch(threading.local):
    """float32 buffers this thread reuses from frame to frame.

    A fresh array of a few MB costs a page fault per 4 KiB each time, which on a 512 x 512 CT
    is more than the whole decode; frames over 32 MB get fresh arrays and are not kept.
    """

    max_bytes = 32 * 1024**2

    def __init__(self):
        self.buffers: dict[str, np.ndarray] = {}

    def array(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        count = int(np.prod(shape))
        if count * 4 > self.max_bytes:
            return np.empty(shape, dtype=np.float32)
        buffer = self.buffers.get(name)
        if buffer is None or buffer.size < count:
            buffer = self.buffers[name] = np.empty(count, dtype=np.float32)
        return buffer[:count].reshape(shape)


_scratch = _Scratch()


@dataclass(frozen=True)
class _Plane:
    """A one-channel frame held as ``values * scale + offset``, with the range of that result.

    Rescale, MONOCHROME1 inversion and normalisation are affine, and an affine map commutes
    with resizing (its weights sum to one), so they stay pending while the resize runs on the
    raw values. Only a window, which clips, is applied to every pixel.
    """

    values: np.ndarray
    scale: float
    offset: float
    low: float
    high: float

    @classmethod
    def of(cls, values: np.ndarray, scale: float = 1.0, offset: float = 0.0) -> "_Plane":
        """NaN and inf become the lowest finite value; the range comes from the raw extremes."""
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            finite = np.isfinite(values)
            values = np.where(finite, values, values[finite].min() if finite.any() else 0)
        if values.size == 0:
            return cls(values, scale, offset, 0.0, 0.0)
        ends = (float(values.min()) * scale + offset, float(values.max()) * scale + offset)
        return cls(values, scale, offset, min(ends), max(ends))

    def materialise(self, out: np.ndarray | None = None) -> np.ndarray:
        """``values * scale + offset`` as float32, into ``out`` or a new array."""
        if out is None:
            out = np.empty(self.values.shape, dtype=np.float32)
        np.multiply(self.values, np.float32(self.scale), out=out, casting="unsafe")
        if self.offset != 0.0:
            out += np.float32(self.offset)
        return out

    def inverted(self) -> "_Plane":
        """``low + high - x``: high becomes dark, as MONOCHROME1 means."""
        return _Plane(self.values, -self.scale, self.low + self.high - self.offset, self.low, self.high)


def _planes(ds: Dataset, geometry: Geometry) -> tuple[_Plane, _Plane]:
    """The middle frame after the modality transform (colour: its luminance), and as displayed."""
    index = geometry.frames // 2
    frame, photometric = decode_frame(ds, index, geometry)
    if photometric == "PALETTE COLOR":
        plane = _Plane.of(_luminance(apply_color_lut(frame, ds), "RGB"))
        return plane, plane
    if frame.ndim == 3:
        plane = _Plane.of(_luminance(frame, photometric))
        return plane, plane
    attributes = _frame_attributes(ds, index)
    modality = _modality_plane(frame, attributes)
    display = _apply_voi(modality, attributes)
    return modality, display.inverted() if photometric == "MONOCHROME1" else display


def _modality_plane(frame: np.ndarray, attributes: Dataset) -> _Plane:
    """Modality LUT (pydicom's ``apply_modality_lut``) or rescale slope and intercept."""
    if attributes.get("ModalityLUTSequence"):
        return _Plane.of(apply_modality_lut(frame, attributes))
    if "RescaleSlope" in attributes and "RescaleIntercept" in attributes:
        return _Plane.of(frame, float(attributes.RescaleSlope), float(attributes.RescaleIntercept))
    return _Plane.of(frame)


def _frame_attributes(ds: Dataset, index: int) -> Dataset:
    """``ds``, or a view carrying the rescale and window of frame ``index``'s functional groups."""
    items = []
    for groups_keyword, item_index in (("SharedFunctionalGroupsSequence", 0),
                                       ("PerFrameFunctionalGroupsSequence", index)):
        groups = ds.get(groups_keyword)
        if not groups or item_index >= len(groups):
            continue
        for module in ("PixelValueTransformationSequence", "FrameVOILUTSequence"):
            if groups[item_index].get(module):
                items.append(groups[item_index].get(module)[0])
    if not items:
        return ds
    view = Dataset()
    view.file_meta = ds.file_meta
    for source in (ds, *items):
        for keyword in _FRAME_VIEW_KEYWORDS:
            if keyword in source:
                view[keyword] = source[keyword]
    return view


_FRAME_VIEW_KEYWORDS = (
    "PhotometricInterpretation", "BitsStored", "PixelRepresentation", "ModalityLUTSequence", "VOILUTSequence",
    "RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth", "VOILUTFunction",
)


def _apply_voi(plane: _Plane, attributes: Dataset) -> _Plane:
    """VOI LUT (pydicom's ``apply_voi``) or window; one that is broken or leaves no contrast is skipped."""
    try:
        if attributes.get("VOILUTSequence"):
            unscaled = plane.scale == 1.0 and plane.offset == 0.0  # a LUT wants the integers
            windowed = _Plane.of(apply_voi(plane.values if unscaled else plane.materialise(), attributes))
        else:
            curve = window_curve(attributes)
            if curve is None:
                return plane
            low, high = (float(v) for v in curve(np.array([plane.low, plane.high], dtype=np.float32)))
            work = _scratch.array("work", plane.values.shape)
            windowed = _Plane(curve(plane.materialise(out=work)), 1.0, 0.0, low, high)
    except Exception:  # a broken VOI must not cost the image
        return plane
    return windowed if windowed.high > windowed.low else plane


def window_curve(attributes: Dataset):
    """The Window Center / Width curve (first pair) as a function from float32 values to [0, 1].

    None when there is no usable window. The curves of pydicom's ``apply_windowing`` (LINEAR,
    LINEAR_EXACT, SIGMOID; PS3.3 C.11.2.1.2), in float32, in place and with one clip instead of
    masks: about ten times faster. The output range is [0, 1] instead of the stored bit range,
    which the normalisation makes moot.
    """
    if attributes.get("WindowCenter") is None or attributes.get("WindowWidth") is None:
        return None
    center = float(_first(attributes.WindowCenter))
    width = float(_first(attributes.WindowWidth))
    function = str(attributes.get("VOILUTFunction") or "LINEAR").strip().upper()
    if function == "SIGMOID":
        return None if width <= 0 else _sigmoid(center, width)
    if function == "LINEAR_EXACT":
        return None if width <= 0 else _ramp(center - width / 2, width)
    if width < 1:
        return None
    if width == 1:
        return _step(center - 0.5)
    return _ramp(center - 0.5 - (width - 1) / 2, width - 1)


def _ramp(start: float, span: float):
    def ramp(values: np.ndarray) -> np.ndarray:
        values -= np.float32(start)
        values *= np.float32(1.0 / span)
        return np.clip(values, 0.0, 1.0, out=values)
    return ramp


def _step(threshold: float):
    def step(values: np.ndarray) -> np.ndarray:
        np.greater(values, np.float32(threshold), out=values, casting="unsafe")
        return values
    return step


def _sigmoid(center: float, width: float):
    def sigmoid(values: np.ndarray) -> np.ndarray:
        values -= np.float32(center)
        values *= np.float32(-4.0 / width)
        np.exp(values, out=values)
        values += np.float32(1.0)
        return np.reciprocal(values, out=values)
    return sigmoid


def _first(value):
    return value[0] if isinstance(value, (list, tuple, MultiValue)) else value


def _luminance(image: np.ndarray, photometric: str) -> np.ndarray:
    """One channel into scratch: BT.601 luma of RGB, or the Y plane of YCbCr pydicom left as is."""
    if image.shape[-1] != 3:
        raise Rejected(UNDECODABLE_PIXELS, f"{image.shape[-1]} samples per pixel are not supported")
    luminance = _scratch.array("work", image.shape[:2])
    if photometric.startswith("YBR"):
        np.copyto(luminance, image[..., 0], casting="unsafe")
        return luminance
    term = _scratch.array("term", image.shape[:2])
    np.multiply(image[..., 0], _LUMA_WEIGHTS[0], out=luminance, casting="unsafe")
    for channel in (1, 2):
        np.multiply(image[..., channel], _LUMA_WEIGHTS[channel], out=term, casting="unsafe")
        luminance += term
    return luminance


def _normalised_image(plane: _Plane, size: int) -> np.ndarray:
    """Resize the raw values, then map the plane's [low, high] to [0, 1]; float16.

    A constant image becomes all zeros; the aspect ratio is not kept.
    """
    if not plane.high > plane.low:
        return np.zeros((size, size), dtype=np.float16)
    small = _resize(plane.values, size)
    span = plane.high - plane.low
    small *= np.float32(plane.scale / span)
    small += np.float32((plane.offset - plane.low) / span)
    np.clip(small, 0.0, 1.0, out=small)  # float rounding, and an overflow to inf, land inside
    return np.nan_to_num(small, copy=False, nan=0.0).astype(np.float16)


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    """A new float32 ``size`` x ``size`` image: the area mean when the sides divide, else PIL bilinear.

    PIL widens its bilinear filter when shrinking, so it averages areas too; ``reducing_gap``
    first box-reduces by whole factors, which halves its time on large frames.
    """
    rows, columns = image.shape
    if image.dtype != np.float32:
        image = _Plane(image, 1.0, 0.0, 0.0, 0.0).materialise(out=_scratch.array("work", image.shape))
    if rows % size == 0 and columns % size == 0:
        row_factor, column_factor = rows // size, columns // size
        bands = _scratch.array("bands", (size, columns))
        np.sum(image.reshape(size, row_factor, columns), axis=1, out=bands)
        small = bands[:, 0::column_factor].copy()
        for first_column in range(1, column_factor):  # numpy sums a short last axis slowly
            small += bands[:, first_column::column_factor]
        small *= np.float32(1.0 / (row_factor * column_factor))
        return small
    picture = Image.fromarray(np.ascontiguousarray(image))
    return np.array(picture.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0), dtype=np.float32)


@contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
