"""CSV and Parquet exports to ``RawRecords``: an OMOP CDM table, or a site mapping's table.

A file whose header is an OMOP CDM 5.4 table's is read as one (``medmeta.records.omop``), with no
site mapping; any other goes through the first site mapping whose columns it has. Only the
columns those read are looked at; the rest (names, addresses, notes) never leave this module.

The unit of loss is a row: one that can not be split (``read_csv``), or whose cells are not what
its mapping says, is rejected alone with its number ("row N": a CSV's line, the header being row 1;
a Parquet file's position from 1), and the rest of the file is read.
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter

import pandas as pd
import pyarrow.parquet as pq

from medmeta.errors import (
    INVALID_RECORD,
    MALFORMED_CSV_ROW,
    NON_NUMERIC_VALUE,
    NOT_FINITE,
    UNKNOWN_SITE_LAYOUT,
    Rejected,
)
from medmeta.records.omop import parse_omop
from medmeta.records.omop_tables import recognise_cdm_table
from medmeta.records.cells import blank, to_date
from medmeta.records.raw import RawRecords
from medmeta.records.site_mappings import DATE_FIELDS, FieldSpec, TableMapping, find_mapping
from medmeta.terminology.systems import LOINC


def read_csv(data: bytes) -> tuple[pd.DataFrame, list[Rejected]]:
    """A CSV export's table (every cell text) indexed by each row's number in the file, and the rows
    that can not be read, each rejected alone with its number and ``malformed_csv_row``.

    A row's number is the line it starts on (the header is row 1). The delimiter is the one of
    ",", ";" and tab the header holds most of; the text is UTF-8 (with or without BOM), else
    latin-1. Lines split on "\\n", "\\r\\n" and "\\r" only (never on U+2028 or U+0085). A row with
    fewer fields than the header has blank cells at its end; one with more (besides empty trailing
    ones) is refused, and so is one the csv module can not split (a NUL, an over-long field). Blank
    lines are skipped. Duplicate header names get ".1", ".2" (as pandas names them), empty ones
    "Unnamed: <position>". Raises ``Rejected`` (``invalid_record``) when there is no readable header.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    sep = max((",", ";", "\t"), key=lambda d: text.split("\n", 1)[0].count(d))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
    header, rows, numbers, rejects = None, [], [], []
    while True:
        number = reader.line_num + 1
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error:
            if header is None:
                raise Rejected(INVALID_RECORD, "not a readable CSV table (its header can not be split)") from None
            rejects.append(Rejected(MALFORMED_CSV_ROW, "the CSV reader can not split the row (a NUL character, "
                                                       "an over-long field or a stray quote)", location=f"row {number}"))
            continue
        if not record or len(record) == 1 and not record[0].strip():
            continue
        if header is None:
            header = _column_names(record)
            continue
        if len(record) > len(header):
            if any(field.strip() for field in record[len(header):]):
                rejects.append(Rejected(MALFORMED_CSV_ROW, f"the row has {len(record)} fields, the header "
                                                           f"{len(header)}", location=f"row {number}"))
                continue
            del record[len(header):]
        elif len(record) < len(header):
            record.extend([""] * (len(header) - len(record)))
        rows.append(record)
        numbers.append(number)
    if header is None:
        raise Rejected(INVALID_RECORD, "not a readable CSV table (no header)")
    columns = list(zip(*rows)) if rows else [()] * len(header)  # column by column: faster to build
    frame = pd.DataFrame({name: pd.Series(values, dtype=object) for name, values in zip(header, columns)})
    frame.index = pd.Index(numbers, dtype="int64")
    return frame, rejects


def _column_names(header: list[str]) -> list[str]:
    names, seen = [], Counter()
    for position, name in enumerate(header):
        name = name or f"Unnamed: {position}"
        count = seen[name]
        seen[name] += 1
        names.append(name if count == 0 else f"{name}.{count}")
    return names


def read_parquet(data: bytes) -> pd.DataFrame:
    """A Parquet file's table indexed by row number (1 for its first row)."""
    try:
        frame = pq.read_table(io.BytesIO(data)).to_pandas()
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise Rejected(INVALID_RECORD, f"not a readable Parquet file ({type(exc).__name__})") from None
    frame.index = pd.RangeIndex(1, len(frame) + 1)
    return frame


def parse_tabular(data: bytes, kind: str, mappings: list[TableMapping], site: str | None = None) -> RawRecords:
    """``site``: the site an OMOP table belongs to (settings or landing folder); a mapping names its own."""
    frame, unreadable = read_table(data, kind)
    return parse_tabular_frame(frame, unreadable, kind, mappings, site)


def read_table(data: bytes, kind: str) -> tuple[pd.DataFrame, list[Rejected]]:
    """A CSV (``read_csv``) or Parquet (``read_parquet``) file's table and its unreadable rows."""
    return read_csv(data) if kind == "csv" else (read_parquet(data), [])


def is_records_header(columns, kind: str, mappings: list[TableMapping]) -> bool:
    """True when the header is an OMOP CDM table's or a site mapping's (what ``parse_tabular_frame`` reads)."""
    return recognise_cdm_table(columns) is not None or find_mapping(mappings, set(map(str, columns)), kind) is not None


def parse_tabular_frame(frame: pd.DataFrame, unreadable: list[Rejected], kind: str, mappings: list[TableMapping],
                        site: str | None = None) -> RawRecords:
    """``parse_tabular`` of a table already read (``read_table``)."""
    omop_table = recognise_cdm_table(frame.columns)
    if omop_table is not None:
        records = parse_omop(frame, omop_table, site)
    else:
        records = _parse_mapped(frame, kind, mappings)
    for error in unreadable:
        records.reject(error, error.location)
    return records


def _parse_mapped(frame: pd.DataFrame, kind: str, mappings: list[TableMapping]) -> RawRecords:
    mapping = find_mapping(mappings, set(map(str, frame.columns)), kind)
    if mapping is None:
        raise Rejected(UNKNOWN_SITE_LAYOUT, f"the {kind} columns match no site mapping in config/sites")
    records = RawRecords(site=mapping.site)
    needed = [spec.column for spec in mapping.fields.values()] + list(mapping.wide)
    columns = {c: frame[c].tolist() for c in needed if c in frame.columns}
    for i, number in enumerate(frame.index.tolist()):
        location = f"row {number}"
        try:
            row = {name: _cell(spec, name, columns, i) for name, spec in mapping.fields.items()}
            if not row.get("mrn"):
                raise Rejected(INVALID_RECORD, "the row has no MRN")
            row["issuer"] = mapping.issuer
            _add_systems(row, mapping)
            if mapping.wide:
                _add_wide(records, mapping, row, columns, i, location)
            else:
                row["location"] = location
                records.add(mapping.table, row)
        except Rejected as error:
            records.reject(error, location)
    return records


def _add_wide(records: RawRecords, mapping: TableMapping, row: dict, columns: dict, i: int, location: str):
    for column, analyte in mapping.wide.items():
        cell = columns[column][i] if column in columns else None
        if blank(cell):
            continue
        try:
            value = _number(cell, column)
        except Rejected as error:
            records.reject(error, f"{location} column {column}")
            continue
        records.add(mapping.table, {
            "mrn": row["mrn"], "issuer": mapping.issuer, "effective_date": row.get("effective_date"),
            "system": LOINC, "code": analyte["code"], "display": None, "value": value, "unit": analyte["unit"],
            "comparator": None, "location": f"{location} column {column}",
        })


def _add_systems(row: dict, mapping: TableMapping) -> None:
    """The code system (and no display: CSV exports carry codes) of the row's coded fields."""
    if mapping.table in ("conditions", "observations"):
        row["system"], row["display"] = mapping.system("code"), None
        if mapping.table == "observations":
            row["comparator"] = None
    elif mapping.table == "medication_exposures":
        row["drug_system"], row["drug_display"] = mapping.system("drug_code"), None


def _cell(spec: FieldSpec, name: str, columns: dict, i: int):
    raw = columns[spec.column][i] if spec.column in columns else None
    if blank(raw):
        if spec.codes and "" in spec.codes:
            return spec.codes[""]
        return None
    if name in DATE_FIELDS:
        return to_date(raw, spec.date_format, spec.column)
    if name == "value":
        return _number(raw, spec.column)
    text = str(raw).strip()
    if spec.codes is not None:
        if text not in spec.codes:
            raise Rejected(INVALID_RECORD, f"column {spec.column} holds a code the site mapping does not list")
        return spec.codes[text]
    if spec.icd10_dotless and "." not in text and len(text) > 3:
        text = f"{text[:3]}.{text[3:]}"
    return text


def _number(value, column: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise Rejected(NON_NUMERIC_VALUE, f"column {column} is not a number") from None
    if not math.isfinite(number):
        raise Rejected(NOT_FINITE, f"column {column} is not a finite number")
    return number

