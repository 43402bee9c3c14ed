"""What kind of file is this? Decided from the content, the name only breaks ties.

A FHIR bulk export's ``log.ndjson`` (lines with ``exportId`` / ``eventId`` and no
``resourceType``) is its own kind, "fhir_export_log": the export's log, holding no records.
FHIR XML is recognised and refused as such (``fhir_xml_unsupported``). A ".gz" ending is looked
through (``medmeta.landing.walk.read_item`` has inflated the data already).

Only a prefix of the data is examined (plus the last bytes for Parquet), so sniffing a
large file costs next to nothing.
"""

from __future__ import annotations

import codecs
import json
import re
import struct
from pathlib import PurePosixPath

from medmeta.errors import (
    AMBIGUOUS_TABLE,
    EMPTY_FILE,
    FHIR_XML_UNSUPPORTED,
    MACOS_METADATA,
    NOT_DICOM,
    UNSUPPORTED_FILE_TYPE,
    Rejected,
)

PREFIX_BYTES = 8192

DICOM_MAGIC = b"DICM"
DICOM_MAGIC_OFFSET = 128
PARQUET_MAGIC = b"PAR1"
UTF8_BOM = b"\xef\xbb\xbf"
APPLE_DOUBLE_MAGIC = (b"\x00\x05\x16\x07", b"\x00\x05\x16\x00")  # AppleDouble, AppleSingle (RFC 1740)

# Every DICOM value representation: an explicit-VR element carries one of these at bytes 4-5.
DICOM_VRS = frozenset(
    vr.encode()
    for vr in "AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR "
    "US UT UV".split()
)
# A meta-less DICOM file starts with a File Meta (0002) or Identifying (0008) group element.
_RAW_DICOM_GROUPS = (0x0002, 0x0008)
_CSV_DELIMITERS = (",", ";", "\t")
# Control characters that make a prefix binary (all below 0x20 except \t \n \f \r). Searched in the
# bytes: below 0x80 a byte is the same character in UTF-8 and latin-1, and UTF-8 never uses such a
# byte inside a multi-byte sequence, so this is exactly a search of the decoded text, at C speed.
_BINARY_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0e-\x1f]")
FHIR_EXPORT_LOG = "fhir_export_log"
_EXPORT_LOG_KEYS = ("exportId", "eventId")
# The root element of a FHIR XML document: <Patient xmlns="http://hl7.org/fhir">, possibly prefixed.
_FHIR_XML_ROOT = re.compile(r"""<(?:[A-Za-z_][\w.-]*:)?[A-Z][A-Za-z]*\b[^>]*"""
                            r"""\bxmlns(?::[\w.-]+)?\s*=\s*["']http://hl7\.org/fhir["']""")


def sniff(data: bytes, name: str) -> str:
    """Return "dicom", "json", "ndjson", "fhir_export_log", "csv" or "parquet"; raise ``Rejected``
    for anything else."""
    if not data or data.isspace():
        raise Rejected(EMPTY_FILE, "the file is empty" if not data else "the file holds only whitespace")
    if data[:4] in APPLE_DOUBLE_MAGIC:
        raise Rejected(MACOS_METADATA, "a macOS AppleDouble file (Finder metadata of another file), not data")
    path = PurePosixPath(name)
    suffix = (path.with_suffix("") if path.suffix.lower() == ".gz" else path).suffix.lower()
    if has_dicom_preamble(data):
        return "dicom"
    if data.startswith(PARQUET_MAGIC) and data.endswith(PARQUET_MAGIC) and len(data) >= 8:
        return "parquet"
    if looks_like_raw_dicom(data) and suffix in ("", ".dcm", ".dicom"):
        return "dicom"
    text = _text_prefix(data[:PREFIX_BYTES])
    if text is not None:
        kind = _text_kind(text, suffix)
        if kind is not None:
            return kind
    if suffix in (".dcm", ".dicom"):
        raise Rejected(NOT_DICOM, "named as DICOM but holds neither a DICM preamble nor a DICOM data set")
    raise Rejected(UNSUPPORTED_FILE_TYPE, "not DICOM, JSON, NDJSON, CSV or Parquet")


ACTIVITY = "activity"  # a compound activity table (CSV or Parquet): medmeta.chem.activity_table


def activity_layout(columns, name: str, records_header: bool):
    """A CSV or Parquet table's activity layout (``medmeta.chem.activity_table.recognise``) when its header is a
    compound activity table's, else None (records). ``records_header``: the header is also an OMOP table's or
    a site mapping's (``medmeta.records.tabular.is_records_header``); a header that is both is refused
    (``ambiguous_table``) rather than guessed."""
    from medmeta.chem.activity_table import recognise

    try:
        layout = recognise(columns, name)
    except Rejected:
        if records_header:
            return None
        raise
    if layout is not None and records_header:
        raise Rejected(AMBIGUOUS_TABLE, "the header fits both a compound activity table (a SMILES column and an "
                                        "activity) and a records layout (an OMOP table or a site mapping)")
    return layout


def has_dicom_preamble(data: bytes) -> bool:
    """True when "DICM" follows the 128-byte preamble."""
    return data[DICOM_MAGIC_OFFSET:DICOM_MAGIC_OFFSET + 4] == DICOM_MAGIC


def looks_like_raw_dicom(data: bytes) -> bool:
    """True when the data starts like a DICOM data set written without preamble and meta.

    The first element must belong to group 0x0002 or 0x0008 and be followed by an explicit VR
    or, for implicit VR little endian, by a length that fits in the data.
    """
    if len(data) < 8:
        return False
    for byte_order in "<>":
        group, _element = struct.unpack_from(byte_order + "HH", data)
        if group not in _RAW_DICOM_GROUPS:
            continue
        if data[4:6] in DICOM_VRS:
            return True
        if byte_order == "<" and struct.unpack_from("<I", data, 4)[0] <= len(data) - 8:
            return True
    return False


def _text_prefix(prefix: bytes) -> str | None:
    """The prefix decoded as UTF-8 (else latin-1) without its BOM; None when it looks binary."""
    prefix = prefix.removeprefix(UTF8_BOM)
    if _BINARY_CONTROL.search(prefix):
        return None
    try:
        return codecs.getincrementaldecoder("utf-8")().decode(prefix, final=False)
    except UnicodeDecodeError:
        return prefix.decode("latin-1")


def _text_kind(text: str, suffix: str) -> str | None:
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        if _is_export_log(stripped):
            return FHIR_EXPORT_LOG
        return "ndjson" if _is_ndjson(stripped, suffix) else "json"
    if stripped.startswith("<") and _FHIR_XML_ROOT.search(stripped):
        raise Rejected(FHIR_XML_UNSUPPORTED, "FHIR XML is not read; export the data as FHIR JSON or NDJSON")
    if _has_delimited_header(stripped) or (stripped and suffix in (".csv", ".tsv")):
        return "csv"
    return None


def _is_ndjson(text: str, suffix: str) -> bool:
    # "\n" only: U+2028, U+2029 and U+0085 are valid inside a JSON string, and str.splitlines splits there
    lines = [line.lstrip() for line in text.split("\n") if line.strip()]
    if len(lines) >= 2 and _is_json_object(lines[0]):  # one whole JSON document never continues after it
        return True
    if not all(line.startswith("{") for line in lines):
        return False
    return len(lines) >= 2 or suffix in (".ndjson", ".jsonl")


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except (ValueError, RecursionError):
        return False


def _is_export_log(text: str) -> bool:
    """The first line is a JSON object naming an exportId or eventId and no resourceType."""
    first = text.split("\n", 1)[0].strip()
    try:
        line = json.loads(first)
    except (ValueError, RecursionError):  # longer than the prefix, not JSON, or too deep: its keys as text
        return '"resourceType"' not in first and any(f'"{key}"' in first for key in _EXPORT_LOG_KEYS)
    return isinstance(line, dict) and "resourceType" not in line and any(key in line for key in _EXPORT_LOG_KEYS)


def _has_delimited_header(text: str) -> bool:
    header = text.split("\n", 1)[0]
    return any(header.count(delimiter) >= 1 for delimiter in _CSV_DELIMITERS)
