"""One OMOP CDM 5.4 table (a CSV or Parquet file) to ``RawRecords``, with no site mapping.

The table is recognised from its header (``medmeta.records.omop_tables``). Read:
    person               -> patients: person_id as the MRN, issued by "omop:<site>" (person ids are
                            unique only within one CDM); birth from birth_datetime, else
                            year/month/day_of_birth (a missing month or day is the 1st, as OHDSI's
                            age = year - year_of_birth); sex from gender_concept_id (8507 male,
                            8532 female, another concept unknown), else gender_source_value (M/F).
    condition_occurrence -> conditions (onset = condition_start_date)
    drug_exposure        -> medication_exposures (start = drug_exposure_start_date, outcome unknown)
    measurement          -> observations: value_as_number with operator_concept_id as the comparator,
                            or value_as_concept_id as a categorical value
    observation          -> observations likewise (value_as_string is free text: never read as a value)
    concept              -> ``RawRecords.concepts`` (``medmeta.records.omop_concepts``)
Every other CDM table (visit_occurrence, provider, location, note, cost, ...) is counted under
``ignored["OMOP <table>"]`` and not read. Only the columns named in ``READ_COLUMNS`` are looked at:
names, addresses, note text and free-text values never leave this module.

A concept is kept as the row gives it, to be resolved at consolidation against the CONCEPT
table: (OMOP_CONCEPT, the standard concept id); when that is 0, the source concept id; when that
is 0 too, the *_source_value as a code of the local system ``urn:medmeta:omop-source-value:<table>``.
Units likewise: unit_source_value as written, else "omop-concept:<unit_concept_id>".

A row with a malformed person_id, date, number or concept id is rejected with its location
("row N", counting the CSV header as row 1); the rest of the file goes on. A measurement or
observation without a usable value is excluded by a named rule, counted.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import date

import pandas as pd

from medmeta.errors import INVALID_RECORD, NON_NUMERIC_VALUE, NOT_FINITE, NUMBER_TOO_LARGE, Rejected
from medmeta.records.omop_tables import normalise_column
from medmeta.records.omop_concepts import UNIT_PREFIX, concept_table
from medmeta.records.cells import blank, to_date
from medmeta.records.raw import RawRecords
from medmeta.terminology.systems import OMOP_CONCEPT

DEFAULT_SITE = "omop"
SOURCE_VALUE_SYSTEM = "urn:medmeta:omop-source-value:"  # + the CDM table
MALE, FEMALE = 8507, 8532  # OMOP Gender concepts
# Meas Value Operator concepts (SNOMED); "=" is an exact value.
OPERATORS = {4171756: "<", 4171754: "<=", 4172703: None, 4171755: ">=", 4172704: ">"}
_INTEGER_TEXT = re.compile(r"[+-]?[0-9]+")
SEX_SOURCE_VALUES = {"m": "male", "male": "male", "f": "female", "female": "female"}

_CODED = ("{0}_concept_id", "{0}_source_concept_id", "{0}_source_value")
_VALUES = ("value_as_number", "value_as_concept_id", "unit_concept_id", "unit_source_value", "value_source_value")
READ_COLUMNS: dict[str, tuple[str, ...]] = {
    "person": ("person_id", "gender_concept_id", "gender_source_value", "birth_datetime", "year_of_birth",
               "month_of_birth", "day_of_birth"),
    "condition_occurrence": ("person_id", "condition_occurrence_id", *(c.format("condition") for c in _CODED), "condition_start_date",
                             "condition_start_datetime"),
    "drug_exposure": ("person_id", "drug_exposure_id", *(c.format("drug") for c in _CODED), "drug_exposure_start_date",
                      "drug_exposure_start_datetime"),
    "measurement": ("person_id", "measurement_id", *(c.format("measurement") for c in _CODED), "measurement_date",
                    "measurement_datetime", "operator_concept_id", *_VALUES),
    "observation": ("person_id", "observation_id", *(c.format("observation") for c in _CODED), "observation_date",
                    "observation_datetime", "value_as_string", *_VALUES),
}


def omop_issuer(site: str) -> str:
    """The issuer of an OMOP person_id: the CDM it belongs to."""
    return f"omop:{site}"


def parse_omop(frame: pd.DataFrame, table: str, site: str | None = None) -> RawRecords:
    """The rows of one CDM ``table`` (recognised from ``frame``'s header) as ``RawRecords``; the
    frame's index holds each row's number in its file ("row N")."""
    records = RawRecords(site=site or DEFAULT_SITE)
    frame = frame.rename(columns=normalise_column)
    label = f"OMOP {table}"
    if table == "concept":
        concepts, rejects = concept_table(frame)
        records.concepts = concepts.to_dict("records")
        records.read[label] += len(concepts)
        for error in rejects:
            records.reject(error, error.location)
        return records
    reader = READERS.get(table)
    if reader is None:
        records.ignored[label] += len(frame)
        return records
    columns = {c: frame[c].tolist() for c in READ_COLUMNS[table] if c in frame.columns}
    issuer = omop_issuer(records.site)
    for i, number in enumerate(frame.index.tolist()):
        location = f"row {number}"
        row = {c: values[i] for c, values in columns.items()}
        try:
            mrn = _person_id(row)
            fact = reader(row, table)
        except Rejected as error:
            records.reject(error, location)
            continue
        if isinstance(fact, str):  # the name of the rule that excludes the row
            records.excluded[fact] += 1
            continue
        canonical_table, fields = fact
        record_id = row.get(f"{table}_id")  # the row's primary key: two facts alike stay two
        record_ref = f"{table}/{str(record_id).strip()}" if record_id not in (None, "") and table != "person" else None
        records.add(canonical_table, {"mrn": mrn, "issuer": issuer, **fields, "location": location,
                                      "record_ref": record_ref})
        records.read[label] += 1
    return records


# A reader turns a row into (canonical table, fields), or names the rule that excludes it.
Reader = Callable[[dict, str], tuple[str, dict] | str]


def _read_person(row: dict, table: str):
    return "patients", {"birth_date": _birth_date(row), "sex": _sex(row)}


def _read_condition(row: dict, table: str):
    system, code = _concept(row, table, "condition")
    return "conditions", {"system": system, "code": code, "display": None,
                          "onset_date": _date(row, "condition_start")}


def _read_drug(row: dict, table: str):
    system, code = _concept(row, table, "drug")
    return "medication_exposures", {"drug_system": system, "drug_code": code, "drug_display": None,
                                    "start_date": _date(row, "drug_exposure_start"), "outcome": "unknown"}


def _read_observation(row: dict, table: str):
    """A measurement or observation row (both name their columns after their table)."""
    system, code = _concept(row, table, table)
    fields = {"system": system, "code": code, "display": None, "effective_date": _date(row, table)}
    value = _value(row, table)
    if isinstance(value, str):
        return value
    return "observations", {**fields, **value}


READERS: dict[str, Reader] = {
    "person": _read_person,
    "condition_occurrence": _read_condition,
    "drug_exposure": _read_drug,
    "measurement": _read_observation,
    "observation": _read_observation,
}


def _value(row: dict, table: str) -> dict | str:
    """A numeric or categorical value, or the rule that excludes a row without one."""
    number = _number(row.get("value_as_number"), "value_as_number")
    if number is not None:
        return {"value": number, "unit": _unit(row), "comparator": _comparator(row),
                "value_system": None, "value_code": None}
    value_concept = _integer(row.get("value_as_concept_id"), "value_as_concept_id")
    if value_concept:
        return {"value": None, "unit": None, "comparator": None,
                "value_system": OMOP_CONCEPT, "value_code": str(value_concept)}
    if not blank(row.get("value_as_string")):
        return f"OMOP {table}: value only as free text (value_as_string)"
    if not blank(row.get("value_source_value")):
        return f"OMOP {table}: value only as source text (value_source_value)"
    return f"OMOP {table}: no value"


def _comparator(row: dict) -> str | None:
    operator = _integer(row.get("operator_concept_id"), "operator_concept_id")
    if not operator:
        return None
    if operator not in OPERATORS:
        raise Rejected(INVALID_RECORD, "operator_concept_id is not a Meas Value Operator concept")
    return OPERATORS[operator]


def _unit(row: dict) -> str | None:
    written = row.get("unit_source_value")
    if not blank(written):
        return str(written).strip()
    unit_concept = _integer(row.get("unit_concept_id"), "unit_concept_id")
    return f"{UNIT_PREFIX}{unit_concept}" if unit_concept else None


def _concept(row: dict, table: str, stem: str) -> tuple[str, str]:
    """(system, code): the standard concept id, else the source concept id, else the source value."""
    standard, source, source_value = (c.format(stem) for c in _CODED)
    for column in (standard, source):
        concept = _integer(row.get(column), column)
        if concept:
            return OMOP_CONCEPT, str(concept)
    if not blank(row.get(source_value)):
        return SOURCE_VALUE_SYSTEM + table, str(row[source_value]).strip()
    raise Rejected(INVALID_RECORD, f"the row names no concept ({standard} and {source} are 0, no {source_value})")


def _person_id(row: dict) -> str:
    person = _integer(row.get("person_id"), "person_id")
    if person is None:
        raise Rejected(INVALID_RECORD, "the row has no person_id")
    return str(person)


def _birth_date(row: dict) -> date | None:
    if not blank(row.get("birth_datetime")):
        return to_date(row["birth_datetime"], None, "birth_datetime")
    year = _integer(row.get("year_of_birth"), "year_of_birth")
    if year is None:
        return None
    month = _integer(row.get("month_of_birth"), "month_of_birth") or 1
    day = _integer(row.get("day_of_birth"), "day_of_birth") or 1
    try:
        return date(year, month, day)
    except (ValueError, OverflowError):  # OverflowError: a part beyond a C int
        raise Rejected(INVALID_RECORD, "year/month/day_of_birth is not a valid date") from None


def _sex(row: dict) -> str:
    gender = _integer(row.get("gender_concept_id"), "gender_concept_id")
    if gender:
        return {MALE: "male", FEMALE: "female"}.get(gender, "unknown")
    written = row.get("gender_source_value")
    return SEX_SOURCE_VALUES.get(str(written).strip().lower(), "unknown") if not blank(written) else "unknown"


def _date(row: dict, stem: str) -> date | None:
    """``<stem>_date``, else the date of ``<stem>_datetime``; None when both are blank."""
    for column in (f"{stem}_date", f"{stem}_datetime"):
        if not blank(row.get(column)):
            return to_date(row[column], None, column)
    return None


def _integer(value, column: str) -> int | None:
    """An integer cell (ids, concept ids, birth year) within 64 bits, as the CDM's bigint; "12.0" is 12.
    None when blank. Digits are read exactly: a float would make two long ids one."""
    if blank(value):
        return None
    if isinstance(value, int):
        number = value
    else:
        text = str(value).strip()
        if _INTEGER_TEXT.fullmatch(text):
            if len(text.lstrip("+-")) > 19:
                raise Rejected(NUMBER_TOO_LARGE, f"{column} has more digits than a 64-bit integer")
            number = int(text)
        else:
            try:
                number = float(text)
            except ValueError:
                raise Rejected(INVALID_RECORD, f"{column} is not an integer") from None
            if not math.isfinite(number):
                raise Rejected(NOT_FINITE, f"{column} is not a finite number")
            if not number.is_integer():
                raise Rejected(INVALID_RECORD, f"{column} is not an integer")
            number = int(number)
    if not -2**63 <= number < 2**63:
        raise Rejected(NUMBER_TOO_LARGE, f"{column} is beyond the range of a 64-bit integer")
    return number


def _number(value, column: str) -> float | None:
    if blank(value):
        return None
    try:
        number = float(str(value).strip())
    except ValueError:
        raise Rejected(NON_NUMERIC_VALUE, f"{column} is not a number") from None
    if not math.isfinite(number):
        raise Rejected(NOT_FINITE, f"{column} is not a finite number")
    return number

