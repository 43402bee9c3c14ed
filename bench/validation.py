"""Validation speed: the observations suite in Great Expectations against the same rules as
plain pandas boolean masks, on the same 1,000,000 canonical rows, in one process.

    python bench/validation.py [--rows 1000000] [--out BENCHMARKS.md]

Both sides compute, per rule, the failing rows (GX: COMPLETE result format with the unexpected
index list; pandas: a boolean mask). GX's import and context set-up are outside the clock.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _report import write_section  # noqa: E402  (bench/_report.py)

SECTION = "validation"


def observations(rows: int, patients: pd.Series, rules, seed: int = 0) -> pd.DataFrame:
    """Canonical observations inside their plausible ranges, with 0.1% planted in mg/dL."""
    rng = np.random.default_rng(seed)
    ranges = {r.where["code"]: (r.kwargs["min_value"], r.kwargs["max_value"]) for r in rules
              if r.expectation == "ExpectColumnValuesToBeBetween" and r.where}
    units = {r.where["code"]: r.kwargs["value_set"][0] for r in rules
             if r.expectation == "ExpectColumnValuesToBeInSet" and r.where}
    codes = np.array(sorted(ranges))
    code = codes[rng.integers(0, len(codes), rows)]
    low = np.array([ranges[c][0] for c in code], float)
    high = np.array([ranges[c][1] for c in code], float)
    value = low + (high - low) * rng.uniform(0.1, 0.9, rows)
    bad = rng.choice(rows, rows // 1000, replace=False)
    value[bad] = high[bad] * 18  # a value left in the wrong unit
    return pd.DataFrame({
        "patient_id": patients.to_numpy()[rng.integers(0, len(patients), rows)],
        "code": code, "value": value, "unit": [units[c] for c in code],
        "effective_date": pd.Timestamp("2024-01-01").date(), "site": "site_b", "source": "0" * 64,
    })


def pandas_failures(frame: pd.DataFrame, rule, patients: pd.Series) -> int:
    """The same rule as a boolean mask; returns the number of failing rows."""
    kw = rule.kwargs
    scope = np.ones(len(frame), bool)
    for column, wanted in (rule.where or {}).items():
        scope &= frame[column].isin(wanted if isinstance(wanted, list) else [wanted]).to_numpy()
    column = frame[kw["column"]] if "column" in kw else None
    if rule.expectation == "ExpectTableRowCountToBeBetween":
        return int(len(frame) < kw["min_value"])
    if rule.expectation == "ExpectColumnValuesToNotBeNull":
        bad = column.isna().to_numpy()
    elif rule.expectation == "ExpectColumnValuesToMatchRegex":
        bad = ~column.str.match(kw["regex"]).fillna(True).to_numpy()
    elif rule.expectation == "ExpectColumnValuesToBeInSet":
        allowed = patients if rule.value_set_from else kw["value_set"]
        bad = ~column.isin(allowed).to_numpy() & column.notna().to_numpy()
    elif rule.expectation == "ExpectColumnValuesToBeBetween":
        bad = ((column < kw["min_value"]) | (column > kw["max_value"])).to_numpy()
    else:
        raise NotImplementedError(rule.expectation)
    return int((bad & scope).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from validation.rules import load_rules
    from validation.run import validate_tables

    rules = load_rules()
    obs_rules = rules.tables["observations"]
    patients = pd.DataFrame({"patient_id": [f"P{i:020x}" for i in range(5000)]})
    frame = observations(args.rows, patients["patient_id"], obs_rules)
    only = replace(rules, tables={"observations": obs_rules})
    validate_tables({"observations": frame.head(1000), "patients": patients}, only)  # GX import and warm-up

    start = time.perf_counter()
    report = validate_tables({"observations": frame, "patients": patients}, only)
    gx_s = time.perf_counter() - start
    gx_failed = {r.rule: r.unexpected_count for r in report.results}

    start = time.perf_counter()
    pd_failed = {r.id: pandas_failures(frame, r, patients["patient_id"]) for r in obs_rules}
    pandas_s = time.perf_counter() - start
    assert pd_failed == gx_failed, "GX and the pandas masks disagree"

    command = f"python bench/validation.py --rows {args.rows}"
    text = f"""## Validation speed (issue 3)

`{command}` — {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}.
{args.rows:,} canonical observation rows, the observations suite ({len(obs_rules)} rules, per-LOINC ranges and units
as GX row conditions), {sum(gx_failed.values()):,} failing rows planted; both sides find the same failures.

| contender | seconds |
|---|---:|
| Great Expectations 1.24 (`validate_tables`, COMPLETE results with row indices) | {gx_s:.2f} |
| the same rules as plain pandas boolean masks | {pandas_s:.2f} |

**GX / pandas = {gx_s / pandas_s:.1f}x** (target: within 2x).
"""
    print(text)
    if args.out:
        write_section(args.out, SECTION, text)


if __name__ == "__main__":
    main()
