"""Observations to their canonical code and unit, once per distinct (system, code, unit).

Parts keep values as the source wrote them; consolidation converts them here, so the cost of
the UCUM library is paid once per distinct pair and a change of ``units.yaml`` applies to every
part at the next ingest. A value whose unit can not be converted to its analyte's canonical unit
leaves the table for the record quarantine, with the file and location it came from and the unit
described by ``describe`` (a keyed hash, never the unit as written: units are free text); so does
one that overflows to infinity on its way to the canonical unit (``not_finite``).

The store holds UCUM units only, and only units the conversion chose (an analyte's canonical unit, a
preferred unit, a coherent form): never the source's spelling. UCUM annotations (``{...}``, free text
that does not change the unit) are removed from any unit that is not units.yaml's canonical unit.
"""

from __future__ import annotations

import re
from typing import Callable

import numpy as np
import pandas as pd

from medmeta.errors import NOT_FINITE, Rejected
from medmeta.ingest.parts import rejected_rows

_KEY = ["system", "code", "unit"]
ANNOTATION = re.compile(r"\{[^{}]*\}")
RECORD_SUFFIXES = (".json", ".ndjson", ".csv", ".tsv", ".txt", ".parquet", ".gz", ".zip")


def warm_units_for(paths: list[str]) -> None:
    """Start building the UCUM registry in the background when the landing may hold records (judged by
    file names alone: it is only a head start), so consolidation does not wait a second for it while the
    workers are busy; a folder of DICOM never builds it."""
    if any(p.lower().endswith(RECORD_SUFFIXES) for p in paths):
        from medmeta.records.ucum import build_in_background

        build_in_background()


def stored_unit(unit: str | None, canonical: str | None) -> str | None:
    """The unit as stored: ``unit`` without UCUM annotations unless it is the analyte's canonical unit."""
    if not unit or unit == canonical or "{" not in unit:
        return unit or None
    return ANNOTATION.sub("", unit) or "1"  # "{cells}/uL" is "/uL"; "{score}" is UCUM's unity


def convert_units(frame: pd.DataFrame, converter,
                  describe: Callable[[str], str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(converted rows, rejects [source, location, reason])``; categorical values pass unchanged.
    ``describe`` turns a unit that failed into what the reason may say of it (a keyed hash)."""
    numeric = frame["value"].notna()
    if not numeric.any():
        return frame, rejected_rows(frame.iloc[:0], [])
    keys = frame.loc[numeric, _KEY].astype(object).where(frame.loc[numeric, _KEY].notna(), None)
    pairs = keys.drop_duplicates()
    table, failed = [], {}
    for system, code, unit in pairs.itertuples(index=False, name=None):
        try:
            rule = converter.rule(system, code, unit)
            unit_stored = stored_unit(rule.unit, converter.canonical_unit(rule.code))
            table.append((system, code, unit, rule.code, unit_stored, rule.scale, rule.offset))
        except Rejected as error:
            described = f" (unit {describe(unit)})" if describe is not None and unit is not None else ""
            failed[(system, code, unit)] = error.reason + described
    rules = pd.DataFrame(table, columns=[*_KEY, "_code", "_unit", "_scale", "_offset"])
    out = frame.copy()
    joined = keys.reset_index().merge(rules, on=_KEY, how="left").set_index("index")
    ok = joined["_code"].notna()
    index = joined.index[ok]
    values = out.loc[index, "value"].to_numpy(dtype="float64")
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused just below, by its row
        converted = values * joined.loc[index, "_scale"].to_numpy("float64") \
            + joined.loc[index, "_offset"].to_numpy("float64")
    out.loc[index, "value"] = converted
    out.loc[index, "code"] = joined.loc[index, "_code"].to_numpy()
    out.loc[index, "unit"] = joined.loc[index, "_unit"].replace("", None).to_numpy()
    bad = joined.index[~ok]
    reasons = [failed[k] for k in keys.loc[bad].itertuples(index=False, name=None)]
    overflow = index[~np.isfinite(converted)]  # a finite value beyond a float's range in the canonical unit
    reasons += [f"{NOT_FINITE}: the value is not a finite number in its analyte's canonical unit"] * len(overflow)
    bad = bad.append(overflow)
    rejects = rejected_rows(out.loc[bad], reasons)
    return out.drop(index=bad), rejects
