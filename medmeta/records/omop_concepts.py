"""OMOP concept ids to (system, code, display), once the export's CONCEPT table is known.

An OMOP clinical row names its concept by ``concept_id``; what the id means lives in the CDM's
CONCEPT table, a separate file that another worker may parse before or after it. So the parser
(``medmeta.records.omop``) keeps the id as a concept of its own system
(``medmeta.terminology.systems.OMOP_CONCEPT``, code = the id), units as
``"omop-concept:<unit_concept_id>"``, and the CONCEPT file parses to a concept table
(``concept_table``). At consolidation ``resolve_omop_concepts`` replaces every id found in that
table by the vocabulary's own (system, code, display): SNOMED CT, RxNorm, LOINC, UCUM... An id
the table lacks stays an OMOP concept id, still a valid concept.

The concept table (rows of ``CONCEPT_SCHEMA``):
    concept_id (int), system (canonical URI from vocabulary_id, ``canonical_system``),
    code (concept_code), display (concept_name, None when blank)
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

from medmeta.errors import INVALID_RECORD, Rejected
from medmeta.records.canonical import CONCEPTS
from medmeta.terminology.systems import OMOP_CONCEPT, UCUM, canonical_system

CONCEPT_SCHEMA = CONCEPTS  # staged by every part that holds a CONCEPT table (medmeta.records.canonical)
UNIT_PREFIX = "omop-concept:"  # a unit known only by its unit_concept_id

# Per canonical table, the (system, code, display) columns that may hold an OMOP concept id.
CODED_COLUMNS: dict[str, tuple[tuple[str, str, str | None], ...]] = {
    "conditions": (("system", "code", "display"),),
    "medication_exposures": (("drug_system", "drug_code", "drug_display"),),
    "observations": (("system", "code", "display"), ("value_system", "value_code", None)),
}


def concept_ids(values: pd.Series) -> pd.Series:
    """Each cell as an integer concept id (nullable Int64): NA when blank, not an integer, or of more
    than 15 digits (CDM concept ids are 32-bit; beyond 2**53 a float64 on the way would round it, beyond
    64 bits it would wrap)."""
    text = values.astype("string").str.strip()
    numbers = pd.to_numeric(text.where(text.str.fullmatch(r"[+-]?\d{1,15}(\.0*)?", na=False)), errors="coerce")
    return numbers.astype("Int64")


def concept_table(frame: pd.DataFrame, first_row: int | None = None) -> tuple[pd.DataFrame, list[Rejected]]:
    """The CONCEPT table (lower-case CDM column names) as a concept table, and its bad rows.

    ``first_row`` is the location number of the frame's first row ("row 2" in a CSV with a
    header); None: the frame's index holds each row's number. A row whose concept_id is not an integer, or that has no vocabulary_id or
    concept_code, is rejected with its location.
    """
    ids = concept_ids(frame["concept_id"])
    vocabulary = _text(frame["vocabulary_id"])
    code = _text(frame["concept_code"])
    good = ids.notna() & vocabulary.notna() & code.notna()
    numbers = frame.index if first_row is None else pd.RangeIndex(first_row, first_row + len(frame))
    rejects = [
        Rejected(INVALID_RECORD, "the concept row has no integer concept_id, vocabulary_id or concept_code",
                 location=f"row {numbers[i]}")
        for i in (~good).to_numpy().nonzero()[0]
    ]
    systems = {v: canonical_system(v) for v in vocabulary[good].unique()}
    table = pd.DataFrame({
        "concept_id": ids[good].astype("int64"),
        "system": vocabulary[good].map(systems),
        "code": code[good],
        "display": _text(frame["concept_name"])[good],
    }).reset_index(drop=True)
    return table.astype({"system": object, "code": object, "display": object}).where(table.notna(), None), rejects


def _text(values: pd.Series) -> pd.Series:
    text = values.astype("string").str.strip()
    return text.mask(text.eq(""))


def resolve_omop_concepts(frame: pd.DataFrame, table: str, concepts: pd.DataFrame) -> pd.DataFrame:
    """``frame`` (a canonical table) with its OMOP concept ids replaced from ``concepts``.

    Rows whose system is OMOP_CONCEPT and whose id is in ``concepts`` get the concept's
    (system, code, display); for observations also the categorical value (value_system,
    value_code) and units written "omop-concept:<id>" whose concept is UCUM (its code). Other
    rows and tables come back unchanged. Vectorised: one join per column group.
    """
    coded = CODED_COLUMNS.get(table)
    if not coded or frame.empty or concepts.empty:
        return frame
    lookup = _lookup(concepts)
    frame = frame.copy()
    for system_col, code_col, display_col in coded:
        pending = frame[system_col].eq(OMOP_CONCEPT)
        if not pending.any():
            continue
        found = _join(frame.loc[pending, code_col], lookup)
        rows = found.index
        frame.loc[rows, system_col] = found["system"]
        frame.loc[rows, code_col] = found["code"]
        if display_col is not None:
            frame.loc[rows, display_col] = found["display"]
    if table == "observations" and "unit" in frame:
        units = frame["unit"].astype("string")
        pending = units.str.startswith(UNIT_PREFIX, na=False)
        found = _join(units[pending].str.slice(len(UNIT_PREFIX)), lookup)
        found = found[found["system"].eq(UCUM)]
        frame.loc[found.index, "unit"] = found["code"]
    return frame


def _lookup(concepts: pd.DataFrame) -> pd.DataFrame:
    """One row per concept id (the first after sorting, so the result never depends on part order)."""
    ids = concept_ids(concepts["concept_id"])
    lookup = concepts.assign(concept_id=ids).dropna(subset=["concept_id"])
    lookup = lookup.sort_values(["concept_id", "system", "code"], kind="mergesort")
    return lookup.drop_duplicates("concept_id", keep="first")[["concept_id", "system", "code", "display"]]


def _join(codes: pd.Series, lookup: pd.DataFrame) -> pd.DataFrame:
    """(system, code, display) of each of ``codes`` that names a concept in ``lookup``, indexed like ``codes``."""
    left = pd.DataFrame({"concept_id": concept_ids(codes)}, index=codes.index).dropna()
    found = left.join(lookup.set_index("concept_id"), on="concept_id", how="inner")[["system", "code", "display"]]
    return found.astype(object).where(found.notna(), None)
