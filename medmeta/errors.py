"""Errors medmeta raises about its input.

A ``Rejected`` carries a short stable ``code`` (tests and people filter on it) and a message
for people. Messages never quote values from the input, so an error can not carry PHI into a
log, an artifact or a quarantine reason; they say what is wrong and where.
"""

from __future__ import annotations


class MedmetaError(Exception):
    """Something the user must fix; the CLI prints it without a traceback."""


class Rejected(MedmetaError):
    """An input file, entry or row that can not be ingested, and why."""

    def __init__(self, code: str, message: str, location: str | None = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.location = location

    @property
    def reason(self) -> str:
        return f"{self.code}: {self.message}"

    def __reduce__(self):  # travels between ingest worker processes
        return (type(self), (self.code, self.message, self.location))


# The reasons a whole file is quarantined. Row-level reasons use the same codes.
EMPTY_FILE = "empty_file"
MACOS_METADATA = "macos_metadata"  # an AppleDouble "__MACOSX/._name" entry: Finder metadata, not data
UNSUPPORTED_FILE_TYPE = "unsupported_file_type"
NOT_DICOM = "not_dicom"
TRUNCATED_DICOM = "truncated_dicom"
CORRUPT_DICOM = "corrupt_dicom"
NO_PIXEL_DATA = "no_pixel_data"
IMAGE_TOO_LARGE = "image_too_large"
UNDECODABLE_PIXELS = "undecodable_pixels"
MALFORMED_JSON = "malformed_json"
JSON_TOO_DEEP = "json_too_deep"  # nested deeper than the JSON parser's limit (orjson: 1024 levels)
NUMBER_TOO_LARGE = "number_too_large"  # an integer of more digits than Python parses, or beyond its field's range
NOT_FINITE = "not_finite"  # a value that is (or becomes, in its canonical unit) infinite or NaN
MALFORMED_CSV_ROW = "malformed_csv_row"  # a row with more fields than the header, or that the CSV reader cannot split
NOT_FHIR = "not_fhir"
UNKNOWN_RESOURCE_TYPE = "unknown_resource_type"
NON_NUMERIC_VALUE = "non_numeric_value"
UNKNOWN_UNIT = "unknown_unit"
FUTURE_BIRTH_DATE = "future_birth_date"
IMPLAUSIBLE_BIRTH_DATE = "implausible_birth_date"  # older than 120 at the reference date
INVALID_RECORD = "invalid_record"
NO_VALID_RECORDS = "no_valid_records"
UNKNOWN_SITE_LAYOUT = "unknown_site_layout"
ZIP_PATH_ESCAPE = "zip_path_escape"
ZIP_ENTRY_TOO_LARGE = "zip_entry_too_large"
ZIP_TOO_LARGE = "zip_too_large"
BAD_ARCHIVE = "bad_archive"
NESTED_ARCHIVE = "nested_archive"
GZIP_TOO_LARGE = "gzip_too_large"
FHIR_XML_UNSUPPORTED = "fhir_xml_unsupported"
SYMLINK_OUTSIDE_SOURCE = "symlink_outside_source"
UNREADABLE = "unreadable"
UNRESOLVED_REFERENCE = "unresolved_patient_reference"
UNRESOLVED_MEDICATION = "unresolved_medication_reference"
OLD_STORE = "old_store_schema"
INVALID_CODE = "invalid_code"  # a code (or code system) outside its vocabulary's format: never stored as text
# Compound activity tables (medmeta.chem): a file's or a row's reasons
AMBIGUOUS_TABLE = "ambiguous_table"  # the header fits both an activity table and a records layout
EMPTY_TABLE = "empty_table"  # a header and no rows
ACTIVITY_NO_TASK = "activity_no_task"  # no target/assay column and a file name that is not CHEMBL<digits>_<type>
ACTIVITY_UNIT_UNKNOWN = "activity_unit_unknown"  # a value column whose unit neither the header nor a unit column names
UNPARSEABLE_SMILES = "unparseable_smiles"  # RDKit can not read the structure (or it is blank)
AMBIGUOUS_MIXTURE = "ambiguous_mixture"  # two different largest organic fragments: which one was measured is unknown
NO_ORGANIC_FRAGMENT = "no_organic_fragment"  # only inorganic pieces (no carbon) after salts are stripped
MISSING_ACTIVITY = "missing_activity"  # no value (nor label) in the row
NON_POSITIVE_ACTIVITY = "non_positive_activity"  # a concentration of 0 or below has no pActivity
MISSING_UNIT = "missing_unit"  # the row's unit cell is blank while the table's unit column names units
INVALID_LABEL = "invalid_label"  # a binary label that is not 0/1, true/false, active/inactive
MISSING_TASK = "missing_task"  # the row's target/assay cell is blank
CENSORED_ACTIVITY = "censored_activity"  # a relation other than "=" (">10000 nM"): a bound, not a measurement
CONFLICTING_LABELS = "conflicting_labels"  # one compound labelled active and inactive in one task
DUPLICATE_COMPOUND = "duplicate_compound"  # predict: a query compound (after standardising) met before; kept once
INTERNAL_ERROR = "internal_error"  # a bug in medmeta, never the input's fault


# -- faults of the machine, not of the input: one line each on the terminal (medmeta.cli) ----------

DISK_FULL_ERRNOS = frozenset({28, 122, 27})  # ENOSPC, EDQUOT, EFBIG (a file-size limit: `ulimit -f`)
READ_ONLY_ERRNOS = frozenset({30, 13, 1})  # EROFS, EACCES, EPERM


def os_fault(error: BaseException) -> OSError | None:
    """The disk-full or read-only ``OSError`` behind ``error`` (itself, or its cause or context,
    as libraries such as Great Expectations wrap it), or None."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS | READ_ONLY_ERRNOS:
            return error
        error = error.__cause__ or error.__context__
    return None


def fault_line(error: BaseException, home: object) -> str | None:
    """One line naming the cause and the fix of a fault the user can mend, or None for a bug.

    ``home`` is the home the command writes (named in the line: where to free space or what to
    make writable). Input and configuration faults are ``MedmetaError``s and say it themselves.
    """
    if isinstance(error, MedmetaError):
        return str(error)
    fault = os_fault(error)
    if fault is None:
        return None
    if fault.errno in DISK_FULL_ERRNOS:
        return f"the disk is full writing {home}: free space and rerun"
    if fault.filename and not _inside(fault.filename, home):
        return None  # not the home: an input the reader could not open is the reader's to report
    return (f"cannot write {fault.filename or home}: the home {home} is read-only ({fault.strerror}); "
            "make it writable, or pass another --home, and rerun")


def _inside(path: object, folder: object) -> bool:
    from pathlib import Path

    try:
        return Path(str(path)).resolve().is_relative_to(Path(str(folder)).resolve())
    except (OSError, ValueError):
        return False


class HomeNotWritable(MedmetaError):
    """The home can not be written at all (a read-only mount, no permission, a full disk)."""


def check_writable(folder: object) -> None:
    """Refuse a home that can not take one new file, before anything is read or written.

    A real write, not ``os.access``: root passes every permission check, not a read-only mount.
    """
    import os
    import tempfile
    from pathlib import Path

    folder = Path(folder)
    target = folder if folder.exists() else next((p for p in folder.parents if p.exists()), folder)
    try:
        with tempfile.TemporaryFile(dir=target, prefix=".medmeta-write-check-") as probe:
            probe.write(b"x")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as error:
        bare = OSError(error.errno, error.strerror)  # the probe's own name would only confuse
        raise HomeNotWritable(fault_line(bare, folder) or f"cannot write {folder}: {error.strerror}") from None
