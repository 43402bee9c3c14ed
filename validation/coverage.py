"""Label coverage: how many patients each disease and drug has, and what it can serve as.

A flag, never a filter: ``meta_train`` (at least ``meta_train_min_cases`` distinct patients),
``meta_test_only`` (at least ``meta_test_min_cases``), or ``too_few``.
"""

from __future__ import annotations

import pandas as pd

from validation.rules import Rules

LABELS = (("disease", "conditions", "code"), ("drug", "medication_exposures", "drug_code"))


def label_coverage(tables: dict[str, pd.DataFrame], rules: Rules) -> list[dict]:
    train = rules.label_coverage.meta_train_min_cases
    test = rules.label_coverage.meta_test_min_cases
    out: list[dict] = []
    for kind, table, column in LABELS:
        frame = tables.get(table)
        if frame is None or frame.empty:
            continue
        counts = frame.dropna(subset=[column, "patient_id"]).groupby(column)["patient_id"].nunique()
        for code, patients in sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0]))):
            role = "meta_train" if patients >= train else "meta_test_only" if patients >= test else "too_few"
            out.append({"kind": kind, "table": table, "code": str(code), "patients": int(patients), "role": role})
    return out
