"""The cases a user hands to ``medmeta predict``: a CSV, or a folder of DICOM files.

- A CSV, one case a row. Optional ``id`` (the case id printed; default: the ``file`` value, else
  ``row N``), ``label`` (a class code: an ICD-10-CM code, or ``response`` / ``no_response`` for a
  drug model; required in a support set), ``file`` (a DICOM file, relative to the CSV's folder)
  for image models; every other column is a record feature (see ``records.py``).
- A folder: every file under it is a DICOM case (id: its path in the folder), with the labels in
  ``labels.csv`` (``file,label``) when the folder has one; a support folder must.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from medmeta.errors import MedmetaError

LABELS_CSV = "labels.csv"
ID_COLUMNS = ("id", "case_id")


@dataclass(frozen=True)
class Cases:
    source: Path  # what the user gave, for messages
    ids: list[str]
    labels: list[str | None]
    files: list[Path] | None  # DICOM files, when the cases are images
    records: dict[str, list[str]]  # record column -> raw cell text per case (empty when none)


def read_cases(path: Path, role: str) -> Cases:
    """The cases at ``path`` (``role``: "support" or "query", for messages and the label rule)."""
    path = Path(path)
    if not path.exists():
        raise MedmetaError(f"{role} {path}: no such file or folder")
    if path.is_dir():
        cases = _from_folder(path, role)
    else:
        cases = _from_csv(path, path.parent, role)
    if not cases.ids:
        raise MedmetaError(f"{role} {path}: no cases")
    duplicates = sorted({i for i in cases.ids if cases.ids.count(i) > 1})
    if duplicates:
        raise MedmetaError(f"{role} {path}: case ids appear more than once: {', '.join(duplicates[:5])}")
    if role == "support":
        unlabeled = [i for i, label in zip(cases.ids, cases.labels) if not label]
        if unlabeled:
            raise MedmetaError(f"support {path}: unlabeled cases ({len(unlabeled)}: {', '.join(unlabeled[:5])}); "
                               "every support case needs a label (a class code)")
    return cases


def _from_folder(folder: Path, role: str) -> Cases:
    labels_csv = folder / LABELS_CSV
    if labels_csv.is_file():
        return _from_csv(labels_csv, folder, role)
    if role == "support":
        raise MedmetaError(f"support {folder}: a folder of DICOM files needs {LABELS_CSV} (file,label) "
                           "naming each support case's class")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    ids = [p.relative_to(folder).as_posix() for p in files]
    return Cases(folder, ids, [None] * len(ids), files, {})


def _from_csv(path: Path, base: Path, role: str) -> Cases:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
            header = [h.strip() for h in (rows[0].keys() if rows else [])]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise MedmetaError(f"{role} {path}: not a readable CSV file ({error})") from None
    if not rows:
        raise MedmetaError(f"{role} {path}: no cases (a header and one row per case expected)")
    if role == "support" and "label" not in header:
        raise MedmetaError(f"support {path}: no label column; every support case needs a label (a class code)")
    rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in rows]
    id_column = next((c for c in ID_COLUMNS if c in header), None)
    files = None
    if "file" in header:
        files = []
        for number, row in enumerate(rows, start=2):
            if not row["file"]:
                raise MedmetaError(f"{role} {path}: line {number} has no file")
            files.append((base / row["file"]).resolve() if not Path(row["file"]).is_absolute() else Path(row["file"]))
    ids = [row[id_column] if id_column and row[id_column] else (row["file"] if files is not None else f"row {n}")
           for n, row in enumerate(rows, start=1)]
    labels = [row.get("label") or None for row in rows]
    skip = {"label", "file", *ID_COLUMNS}
    records = {c: [row[c] for row in rows] for c in header if c not in skip}
    return Cases(path, ids, labels, files, records)
