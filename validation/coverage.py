"""Label coverage: how many patients each disease and drug concept has, and what it can serve as.

A concept is a code within its code system: ``(system, code)`` of a condition, ``(drug_system,
drug_code)`` of a medication exposure. One entry per concept::

    {"kind": "disease" | "drug", "table": ..., "system": <canonical URI or None>, "code": ...,
     "display": <the most frequent display, or None>, "patients": <distinct patients>, "role": ...}

The role is a flag, never a filter: ``meta_train`` (at least ``meta_train_min_cases`` distinct
patients), ``meta_test_only`` (at least ``meta_test_min_cases``), or ``too_few``. Entries are
ordered by patients (most first), then system and code. A row without a code is not a concept
(its own validation rule flags it); a row without a system is counted under system None.
"""

from __future__ import annotations

import pandas as pd

from validation.rules import Rules

# kind, table, system column, code column, display column
LABELS = (
    ("disease", "conditions", "system", "code", "display"),
    ("drug", "medication_exposures", "drug_system", "drug_code", "drug_display"),
)


def label_coverage(tables: dict[str, pd.DataFrame], rules: Rules) -> list[dict]:
    train = rules.label_coverage.meta_train_min_cases
    test = rules.label_coverage.meta_test_min_cases
    out: list[dict] = []
    for kind, table, system_column, code_column, display_column in LABELS:
        frame = tables.get(table)
        if frame is None or frame.empty:
            continue
        rows = frame.dropna(subset=[code_column, "patient_id"])
        keys = [rows[system_column].astype(object).where(rows[system_column].notna(), ""), rows[code_column].astype(str)]
        counts = rows.groupby(keys, sort=False)["patient_id"].nunique()
        displays = _displays(rows, keys, display_column)
        entries = []
        for (system, code), patients in counts.items():
            role = "meta_train" if patients >= train else "meta_test_only" if patients >= test else "too_few"
            entries.append({"kind": kind, "table": table, "system": system or None, "code": code,
                            "display": displays.get((system, code)), "patients": int(patients), "role": role})
        entries.sort(key=lambda e: (-e["patients"], e["system"] or "", e["code"]))
        out += entries
    return out


def _displays(rows: pd.DataFrame, keys: list[pd.Series], column: str) -> dict[tuple[str, str], str]:
    """Per concept its most frequent non-null display (ties: the first in sort order)."""
    if column not in rows.columns:
        return {}
    named = pd.DataFrame({"system": keys[0], "code": keys[1], "display": rows[column]}).dropna(subset=["display"])
    if named.empty:
        return {}
    counted = named.value_counts(["system", "code", "display"]).reset_index(name="n")
    counted = counted.sort_values(["system", "code", "n", "display"], ascending=[True, True, False, True])
    first = counted.drop_duplicates(["system", "code"])
    return {(s, c): d for s, c, d in zip(first["system"], first["code"], first["display"])}


def coverage_roles(entries: list[dict]) -> dict[tuple[str, str | None, str], str]:
    """``{(kind, system, code): role}`` from a validation result's ``label_coverage``: how task
    set building looks a class's coverage role up once classes are concepts within a system."""
    return {(e["kind"], e.get("system"), e["code"]): e["role"] for e in entries}
