"""CSV and Parquet exports to ``RawRecords``: an OMOP CDM table, or a site mapping's table.

A file whose header is an OMOP CDM 5.4 table's is read as one (``medmeta.records.omop``), with no
site mapping; any other goes through the first site mapping whose columns it has. Only the
columns those read are looked at; the rest (names, addresses, notes) never leave this module.
"""

from __future__ import annotations

import io
import math

import pandas as pd
import pyarrow.parquet as pq

from medmeta.errors import (
    INVALID_RECORD,
    NON_NUMERIC_VALUE,
    UNKNOWN_SITE_LAYOUT,
    Rejected,
)
from medmeta.records.omop import parse_omop
from medmeta.records.omop_tables import recognise_cdm_table
from medmeta.records.cells import blank, to_date
from medmeta.records.raw import RawRecords
from medmeta.records.site_mappings import DATE_FIELDS, FieldSpec, TableMapping, find_mapping
from medmeta.terminology.systems import LOINC


def read_csv(data: bytes) -> pd.DataFrame:
    for encoding in ("utf-8-sig", "latin-1"):
        try:
            text = data.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    sep = max((",", ";", "\t"), key=lambda d: text.split("\n", 1)[0].count(d))
    try:
        return pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise Rejected(INVALID_RECORD, f"not a readable CSV table ({type(exc).__name__})") from None


def read_parquet(data: bytes) -> pd.DataFrame:
    try:
        return pq.read_table(io.BytesIO(data)).to_pandas()
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise Rejected(INVALID_RECORD, f"not a readable Parquet file ({type(exc).__name__})") from None


def parse_tabular(data: bytes, kind: str, mappings: list[TableMapping], site: str | None = None) -> RawRecords:
    """``site``: the site an OMOP table belongs to (settings or landing folder); a mapping names its own."""
    frame = read_csv(data) if kind == "csv" else read_parquet(data)
    omop_table = recognise_cdm_table(frame.columns)
    if omop_table is not None:
        return parse_omop(frame, omop_table, kind, site)
    mapping = find_mapping(mappings, set(map(str, frame.columns)), kind)
    if mapping is None:
        raise Rejected(UNKNOWN_SITE_LAYOUT, f"the {kind} columns match no site mapping in config/sites")
    records = RawRecords(site=mapping.site)
    needed = [spec.column for spec in mapping.fields.values()] + list(mapping.wide)
    columns = {c: frame[c].tolist() for c in needed if c in frame.columns}
    for i in range(len(frame)):
        location = f"row {i + 2}" if kind == "csv" else f"row {i + 1}"  # CSV: count the header line
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
        raise Rejected(NON_NUMERIC_VALUE, f"column {column} is not a finite number")
    return number

