"""An activity table's rows to staged compound measurements, each row kept or rejected with its reason.

``stage_activities(frame, layout, site, source)`` reads every row of a table ``medmeta.chem.activity_table``
recognised: its task (target and activity type), its structure standardised
(``medmeta.chem.standardise``) and its activity as pActivity (or a binary label). A row that can not
be read is rejected alone with its number ("row N": a CSV's line, the header being row 1; a Parquet
row's position from 1) and one of the reason codes in ``medmeta.errors``; the rest go on. Nothing is
aggregated here: consolidation (``medmeta.chem.consolidate_activities``) merges one compound's
measurements in one task, across files too.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import pandas as pd
import pyarrow as pa

from medmeta.chem.activity_table import (
    CHEMBL_FILE,
    P_SCALED_COLUMNS,
    ActivityLayout,
    _split_header_unit,
    label_value,
    p_activity,
    task_of,
    unit_or_none,
)
from medmeta.errors import (
    CENSORED_ACTIVITY,
    INVALID_LABEL,
    MISSING_ACTIVITY,
    MISSING_TASK,
    MISSING_UNIT,
    NON_NUMERIC_VALUE,
    NOT_FINITE,
    Rejected,
)

# The staged rows of one file (a part's ``compound_activities``): one per measurement, with its row number.
STAGED_ACTIVITIES = pa.schema([
    ("task", pa.string()), ("target", pa.string()), ("activity_type", pa.string()),
    ("compound_key", pa.string()), ("smiles", pa.string()), ("p_activity", pa.float64()), ("active", pa.bool_()),
    ("site", pa.string()), ("source", pa.string()), ("location", pa.string()),
])
LABEL_TYPE = "label"


@dataclass
class StagedActivities:
    table: pa.Table  # STAGED_ACTIVITIES
    rejects: list[Rejected] = field(default_factory=list)  # each with its location
    units: Counter = field(default_factory=Counter)  # rows per unit as read (normalised: nm, um, p, ...)
    fragments_stripped: int = 0  # rows whose structure lost salts, solvents or counter-ions

    def meta(self) -> dict:
        return {"rows_read": self.table.num_rows + len(self.rejects), "rows_staged": self.table.num_rows,
                "units": dict(sorted(self.units.items())), "fragments_stripped": self.fragments_stripped,
                "rejected": dict(sorted(Counter(e.code for e in self.rejects).items()))}


def _blank(cell) -> bool:
    return cell is None or (isinstance(cell, float) and math.isnan(cell)) or (isinstance(cell, str) and not cell.strip()) \
        or cell is pd.NA or cell is pd.NaT


def _text(cell) -> str | None:
    return None if _blank(cell) else str(cell).strip()


def stage_activities(frame: pd.DataFrame, layout: ActivityLayout, site: str, source: str) -> StagedActivities:
    """Every row of ``frame`` (indexed by row number) as a staged measurement or a rejected row."""
    from medmeta.chem.standardise import standardise_all

    column = {name: frame[name].tolist() if name else None for name in
              (layout.smiles, layout.task, layout.activity_type, layout.value, layout.unit_column, layout.label,
               layout.relation)}
    numbers = frame.index.tolist()
    structures = standardise_all(["" if _blank(s) else str(s) for s in column[layout.smiles]])
    header_unit = unit_or_none(layout.unit) if layout.unit else None
    value_type = _p_column_type(layout.value)
    out = StagedActivities(STAGED_ACTIVITIES.empty_table())
    rows = []
    for i, number in enumerate(numbers):
        location = f"row {number}"
        try:
            task, target, activity_type = _task(layout, column, i)
            value, active, unit = _activity(layout, column, i, header_unit)
            structure = structures[i]
            if isinstance(structure, Rejected):
                raise structure
        except Rejected as error:
            out.rejects.append(Rejected(error.code, error.message, location))
            continue
        if value is None:
            activity_type = activity_type or LABEL_TYPE
        else:
            out.units[unit] += 1
        out.fragments_stripped += structure.stripped
        rows.append({"task": task or task_of(target, activity_type or value_type), "target": target,
                     "activity_type": activity_type or value_type or ("activity" if value is not None else LABEL_TYPE),
                     "compound_key": structure.compound_key, "smiles": structure.smiles, "p_activity": value,
                     "active": active, "site": site, "source": source, "location": location})
    out.table = pa.Table.from_pylist(rows, schema=STAGED_ACTIVITIES)
    return out


def _p_column_type(value_column: str | None) -> str | None:
    """``pKi`` -> Ki, ``pIC50`` -> IC50 (the type a p-scaled column names); None otherwise."""
    if value_column is None:
        return None
    name, _ = _split_header_unit(value_column)
    if name in P_SCALED_COLUMNS and name not in ("pchembl_value", "pactivity"):
        return value_column.strip()[1:]
    return None


def _task(layout: ActivityLayout, column: dict, i: int) -> tuple[str | None, str, str | None]:
    """(task or None to form it, target, activity type or None)."""
    if layout.task is None:
        return layout.file_task, layout.file_target, layout.file_type
    cell = _text(column[layout.task][i])
    if cell is None:
        raise Rejected(MISSING_TASK, "the row's target or assay cell is blank")
    typed = _text(column[layout.activity_type][i]) if layout.activity_type else None
    match = CHEMBL_FILE.match(cell)
    if layout.task.strip().lower() == "task" and match:  # a task id given whole: CHEMBL237_Ki
        return cell, match[1], match[2]
    return None, cell, typed


def _activity(layout: ActivityLayout, column: dict, i: int, header_unit: str | None
              ) -> tuple[float | None, bool | None, str | None]:
    """(pActivity or None, label or None, the unit read)."""
    active = None
    if layout.label is not None:
        cell = column[layout.label][i]
        if not _blank(cell):
            active = label_value(cell)
            if active is None:
                raise Rejected(INVALID_LABEL, "the binary label is not 0/1, true/false or active/inactive")
    if layout.value is None or _blank(column[layout.value][i]):
        if active is None:
            raise Rejected(MISSING_ACTIVITY, "the row has no activity value" + (" and no label" if layout.label else ""))
        return None, active, None
    if layout.relation is not None and (_text(column[layout.relation][i]) or "=").strip("'\"") not in ("=", "=="):
        raise Rejected(CENSORED_ACTIVITY, "the activity is a bound (a relation other than =), not a measurement")
    try:
        number = float(str(column[layout.value][i]).strip())
    except ValueError:
        raise Rejected(NON_NUMERIC_VALUE, "the activity value is not a number") from None
    unit = header_unit
    if layout.unit_column is not None:
        named = _text(column[layout.unit_column][i])
        if named is not None:
            unit = unit_or_none(named)
        elif unit is None:
            raise Rejected(MISSING_UNIT, "the row's unit cell is blank and the header names no unit")
    if not math.isfinite(number):
        raise Rejected(NOT_FINITE, "the activity value is infinite or not a number")
    value = p_activity(number, unit)
    if not math.isfinite(value):
        raise Rejected(NOT_FINITE, "the activity value has no finite pActivity")
    return value, active, unit
