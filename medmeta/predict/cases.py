"""The cases a user hands to ``medmeta predict``: a CSV, or a folder of DICOM files.

- A CSV, one case a row. Optional ``id`` (the case id printed; default: the ``file`` value, else
  ``row N``), ``label`` (a class code: an ICD-10-CM code, or ``response`` / ``no_response`` for a
  drug model; required in a support set), ``file`` (a DICOM file, relative to the CSV's folder)
  for image models; every other column is a record feature (see ``records.py``). Every row has as
  many fields as the header (a ragged row is refused naming its line); blank lines are skipped.
- A folder: every file under it is a DICOM case (id: its path in the folder), with the labels in
  ``labels.csv`` (``file,label``) when the folder has one; a support folder must.

Every file is read once, from a descriptor checked to be a regular file of at most ``max_bytes``
(``medmeta.checked_file``): a FIFO, a device such as ``/dev/zero`` or an oversized file is refused
at once, never waited on or read without end. Reading is linear in the number of rows (duplicate
ids are found with one dict), and messages name files and line numbers, never cell values.
"""

from __future__ import annotations

import csv
import io
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from medmeta.checked_file import file_kind, read_checked
from medmeta.errors import MedmetaError, Rejected

LABELS_CSV = "labels.csv"
ID_COLUMNS = ("id", "case_id")
DEFAULT_MAX_INPUT_BYTES = 1024**3  # per file read (CSV or DICOM); `medmeta predict --max-input-bytes`
MAX_INPUT_BYTES_ENV = "MEDMETA_PREDICT_MAX_INPUT_BYTES"
SETTING = "--max-input-bytes"


@dataclass(frozen=True)
class Cases:
    source: Path  # what the user gave, for messages
    ids: list[str]
    labels: list[str | None]
    files: list[Path] | None  # DICOM files, when the cases are images
    records: dict[str, list[str]]  # record column -> raw cell text per case (empty when none)
    lines: list[int] | None = None  # the CSV line each case starts on, when read from a CSV


def read_cases(path: Path, role: str, max_bytes: int = DEFAULT_MAX_INPUT_BYTES) -> Cases:
    """The cases at ``path`` (``role``: "support" or "query", for messages and the label rule)."""
    path = Path(path)
    if not os.path.lexists(path):
        raise MedmetaError(f"{role} {path}: no such file or folder")
    if os.path.isdir(path):
        cases = _from_folder(path, role, max_bytes)
    else:
        cases = _from_csv(path, path.parent, role, max_bytes)
    if not cases.ids:
        raise MedmetaError(f"{role} {path}: no cases")
    repeated = repeated_ids(cases.ids)
    if repeated:
        where = (lambda i: f"line {cases.lines[i]}") if cases.lines else (lambda i: f"case {i + 1}")
        shown = ", ".join(f"{where(i)} repeats the id of {where(first)}" for i, first in repeated[:5])
        raise MedmetaError(f"{role} {path}: every case needs its own id, but {shown}"
                           + (f" ({len(repeated)} repeats in all)" if len(repeated) > 5 else ""))
    if role == "support":
        unlabeled = [i for i, label in enumerate(cases.labels) if not label]
        if unlabeled:
            where = (lambda i: f"line {cases.lines[i]}") if cases.lines else (lambda i: cases.ids[i])
            raise MedmetaError(f"support {path}: unlabeled cases ({len(unlabeled)}: "
                               f"{', '.join(where(i) for i in unlabeled[:5])}); "
                               "every support case needs a label (a class code)")
    return cases


def repeated_ids(ids: list[str]) -> list[tuple[int, int]]:
    """``(index, index of its first occurrence)`` of every id seen before, in order; one pass."""
    first: dict[str, int] = {}
    repeated = []
    for index, case_id in enumerate(ids):
        seen = first.setdefault(case_id, index)
        if seen != index:
            repeated.append((index, seen))
    return repeated


def read_input(path: Path, role: str, max_bytes: int) -> bytes:
    """The bytes of one input file the user named (a symlink the user gave is followed once, before
    the checked open), or a one-line ``MedmetaError`` naming it."""
    try:
        return read_checked(path, max_bytes, follow=True, setting=SETTING)
    except Rejected as rejected:
        raise MedmetaError(f"{role} {path}: {rejected.message}") from None


def _from_folder(folder: Path, role: str, max_bytes: int) -> Cases:
    labels_csv = folder / LABELS_CSV
    if os.path.lexists(labels_csv):
        return _from_csv(labels_csv, folder, role, max_bytes)
    if role == "support":
        raise MedmetaError(f"support {folder}: a folder of DICOM files needs {LABELS_CSV} (file,label) "
                           "naming each support case's class")
    files = []
    for parent, dirs, names in os.walk(folder, followlinks=False):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            if name.startswith("."):
                continue
            path = Path(parent) / name
            try:
                mode = os.stat(path).st_mode  # a symlink is the file it points to; read_input checks again
            except OSError:
                raise MedmetaError(f"{role} {path}: a broken link or an unreadable entry, not a DICOM file") from None
            if not stat.S_ISREG(mode):
                raise MedmetaError(f"{role} {path}: {file_kind(mode)}, not a DICOM file")
            files.append(path)
    files.sort()
    ids = [p.relative_to(folder).as_posix() for p in files]
    return Cases(folder, ids, [None] * len(ids), files, {})


def _from_csv(path: Path, base: Path, role: str, max_bytes: int) -> Cases:
    data = read_input(path, role, max_bytes)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise MedmetaError(f"{role} {path}: not a readable CSV file (not UTF-8 at byte {error.start})") from None
    del data
    header, columns, lines = _columns(text, path, role)
    if not lines:
        raise MedmetaError(f"{role} {path}: no cases (a header and one row per case expected)")
    if role == "support" and "label" not in header:
        raise MedmetaError(f"support {path}: no label column; every support case needs a label (a class code)")
    files = None
    if "file" in header:
        files = []
        for line, name in zip(lines, columns["file"]):
            if not name:
                raise MedmetaError(f"{role} {path}: line {line} has no file")
            files.append(Path(name) if Path(name).is_absolute() else (base / name).resolve())
    id_column = next((c for c in ID_COLUMNS if c in header), None)
    given = columns[id_column] if id_column else [""] * len(lines)
    ids = [case_id or (columns["file"][n] if files is not None else f"row {n + 1}") for n, case_id in enumerate(given)]
    labels = [label or None for label in columns["label"]] if "label" in columns else [None] * len(lines)
    skip = {"label", "file", *ID_COLUMNS}
    records = {c: values for c, values in columns.items() if c not in skip}
    return Cases(path, ids, labels, files, records, lines)


def _columns(text: str, path: Path, role: str) -> tuple[list[str], dict[str, list[str]], list[int]]:
    """(header, column -> stripped cells, the line each row starts on), refusing a ragged row, a
    repeated or unnamed column, and whatever the csv module can not parse, naming the line."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in next(reader, [])]
        if not header:
            raise MedmetaError(f"{role} {path}: no cases (a header and one row per case expected)")
        unnamed = [n for n, h in enumerate(header, start=1) if not h]
        if unnamed:
            raise MedmetaError(f"{role} {path}: line 1: column {unnamed[0]} of the header has no name")
        seen: dict[str, int] = {}
        for n, name in enumerate(header, start=1):
            if seen.setdefault(name, n) != n:
                raise MedmetaError(f"{role} {path}: line 1: columns {seen[name]} and {n} have the same name")
        width = len(header)
        cells: list[list[str]] = [[] for _ in header]
        lines: list[int] = []
        end = reader.line_num
        for row in reader:
            start, end = end + 1, reader.line_num
            if not row:
                continue  # a blank line
            if len(row) != width:
                raise MedmetaError(f"{role} {path}: line {start} has {len(row)} field{'s' if len(row) != 1 else ''}, "
                                   f"the header has {width}; every row needs one field per column "
                                   "(empty for a missing value)")
            for column, cell in zip(cells, row):
                column.append(cell.strip())
            lines.append(start)
    except csv.Error as error:
        raise MedmetaError(f"{role} {path}: not a readable CSV file (line {reader.line_num}: {error})") from None
    return header, dict(zip(header, cells)), lines
