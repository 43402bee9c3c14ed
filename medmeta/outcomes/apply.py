"""Apply outcome rules: one outcome per patient and drug class, with the reason when it is unknown.

``label_outcomes(exposures, observations, rules)`` takes the exposures with their task class in
``code`` (the drug concept in the task set's system, after concept maps) and returns one row per
patient and class:

- an exposure that states ``response`` / ``no_response`` (the synthetic extension) keeps it; the
  case is the patient's first such exposure to the class (``reason`` ``stated``);
- otherwise the patient's first exposure to the class (by start date) is the start of treatment:
  the first rule (file order) matching it decides, from the rule's analytes in its unit: the last
  value in ``[start - baseline_days, start]`` against the first in ``[start + first, start + last]``
  of ``follow_up_days``. The first analyte (rule order) with both values decides; ``response`` when
  it moves in the rule's direction by at least ``at_least`` (in the unit, or per cent of the
  baseline when ``relative``), else ``no_response``;
- unknown, with its reason: ``no_rule`` (no rule matches the drug), ``no_baseline`` (no value in the
  look-back window), ``no_follow_up`` (a baseline, but no value in the follow-up window).

Censored values (a comparator) are not exact, so they are never a baseline or a follow-up value.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

from medmeta.errors import MedmetaError
from medmeta.outcomes.rules import OutcomeRule, RuleFile

STATED = ("response", "no_response")
UNKNOWN_REASONS = ("no_rule", "no_baseline", "no_follow_up")


def match_rules(exposures: pd.DataFrame, rules: RuleFile) -> pd.Series:
    """Per exposure row, the name of the first rule matching it (as stored or as mapped), or None."""
    names = []
    columns = [("drug_system", "drug_code", "drug_display"), ("source_drug_system", "source_drug_code",
                                                              "source_drug_display")]
    present = [c for c in columns if all(k in exposures for k in c)]
    for row in exposures.itertuples(index=False):
        found = None
        for rule in rules.rules:
            if any(rule.matches(getattr(row, s), getattr(row, c), getattr(row, d)) for s, c, d in present):
                found = rule.name
                break
        names.append(found)
    return pd.Series(names, index=exposures.index, dtype=object)


def check_user_rules(exposures: pd.DataFrame, rules: RuleFile) -> None:
    """A user's rule that matches no drug in the snapshot is refused (file, rule, line): a typo, not data."""
    if not rules.user:
        return
    matched = set(match_rules(exposures, rules).dropna())
    for rule in rules.rules:
        if rule.name not in matched:
            raise MedmetaError(f"{rules.path}, line {rule.line}: rule {rule.name!r} matches no drug in the snapshot")


def label_outcomes(exposures: pd.DataFrame, observations: pd.DataFrame, rules: RuleFile) -> pd.DataFrame:
    """``[patient_id, code, start_date, outcome, reason, rule]``, one row per patient and class (sorted)."""
    columns = ["patient_id", "code", "start_date", "outcome", "reason", "rule"]
    exposures = exposures.dropna(subset=["patient_id", "code"])
    if exposures.empty:
        return pd.DataFrame(columns=columns)
    ordered = exposures.sort_values(["code", "patient_id", "start_date"], na_position="last", kind="stable")
    stated = ordered[ordered["outcome"].isin(STATED)].drop_duplicates(["code", "patient_id"])
    stated = stated.assign(reason="stated", rule=None)[columns]
    first = ordered.drop_duplicates(["code", "patient_id"])
    first = first[~first.set_index(["code", "patient_id"]).index.isin(stated.set_index(["code", "patient_id"]).index)]
    first = first.assign(rule=match_rules(first, rules).to_numpy())
    by_name = {r.name: r for r in rules.rules}
    parts = [stated]
    no_rule = first[first["rule"].isna()]
    parts.append(no_rule.assign(outcome="unknown", reason="no_rule")[columns])
    for name, group in first[first["rule"].notna()].groupby("rule", sort=True):
        outcome, reason = _evaluate(group, observations, by_name[name])
        parts.append(group.assign(outcome=outcome, reason=reason)[columns])
    out = pd.concat([p for p in parts if len(p)], ignore_index=True) if any(len(p) for p in parts) else \
        pd.DataFrame(columns=columns)
    return out.sort_values(["code", "patient_id"], kind="stable").reset_index(drop=True)


def _evaluate(cases: pd.DataFrame, observations: pd.DataFrame, rule: OutcomeRule) -> tuple[np.ndarray, np.ndarray]:
    """Per case (row of ``cases``), its outcome and reason under ``rule``."""
    n = len(cases)
    outcome = np.full(n, "unknown", dtype=object)
    reason = np.full(n, "no_baseline", dtype=object)
    decided = np.zeros(n, bool)
    has_baseline = np.zeros(n, bool)
    stored = [_as_stored(rule, analyte) for analyte in rule.analytes]
    obs = observations[(observations["system"] == rule.analyte_system)
                       & observations["code"].isin([code for code, _, _ in stored]) & observations["value"].notna()
                       & ~observations["censored"].fillna(False).astype(bool)]
    case = pd.DataFrame({"case": np.arange(n), "patient_id": cases["patient_id"].to_numpy(),
                         "start": pd.to_datetime(cases["start_date"]).to_numpy()})
    for code, unit, threshold in stored:  # rule order: the first with both values decides
        values = obs[(obs["code"] == code) & (obs["unit"] == unit)][["patient_id", "value", "effective_date"]]
        joined = case.merge(values, on="patient_id", how="inner")
        joined = joined.assign(days=(pd.to_datetime(joined["effective_date"]) - joined["start"]).dt.days)
        days = joined["days"]
        before = joined[(days <= 0) & (days >= -rule.baseline_days)]
        after = joined[(days >= rule.follow_up_days[0]) & (days <= rule.follow_up_days[1])]
        baseline = before.sort_values(["case", "days"], kind="stable").groupby("case")["value"].last()
        follow = after.sort_values(["case", "days"], kind="stable").groupby("case")["value"].first()
        has_baseline[baseline.index.to_numpy()] = True
        both = baseline.index.intersection(follow.index)
        both = both[~decided[both.to_numpy()]]
        if len(both) == 0:
            continue
        b, f = baseline.loc[both].to_numpy(), follow.loc[both].to_numpy()
        change = (b - f) if rule.direction == "decrease" else (f - b)
        if rule.relative:
            with np.errstate(divide="ignore", invalid="ignore"):
                change = np.where(b != 0, 100.0 * change / np.abs(b), -np.inf)
        idx = both.to_numpy()
        outcome[idx] = np.where(change >= threshold - 1e-9, "response", "no_response")
        reason[idx] = "rule"
        decided[idx] = True
    reason[~decided & has_baseline] = "no_follow_up"
    return outcome, reason


def _as_stored(rule: OutcomeRule, analyte: str) -> tuple[str, str, float]:
    """(code, unit, threshold) as the store holds the analyte: LOINC aliases fold into the canonical code
    (LDL 18262-6 is stored as 22748-8 in mmol/L) and an absolute threshold in the rule's unit is scaled to
    the stored unit; a relative threshold is unit-free."""
    from medmeta.errors import Rejected
    from medmeta.records.units import default_units

    try:
        conversion = default_units().rule(rule.analyte_system, analyte, rule.unit)
    except Rejected as error:
        raise MedmetaError(f"outcome rule {rule.name!r} (line {rule.line}): analyte {analyte} in {rule.unit}: "
                           f"{error.message}") from None
    threshold = rule.at_least if rule.relative else rule.at_least * conversion.scale
    return conversion.code, conversion.unit, threshold


def drug_report(labelled: pd.DataFrame, displays: dict[str, str]) -> dict[str, dict]:
    """Per class: responders, non-responders, unknown by reason, the rule(s) that labelled it."""
    report = {}
    for code, group in labelled.groupby("code", sort=True):
        unknown = Counter(group.loc[group["outcome"] == "unknown", "reason"])
        report[str(code)] = {
            "display": displays.get(code),
            "responders": int((group["outcome"] == "response").sum()),
            "non_responders": int((group["outcome"] == "no_response").sum()),
            "unknown": {r: int(unknown[r]) for r in UNKNOWN_REASONS if unknown[r]},
            "stated": int((group["reason"] == "stated").sum()),
            "rules": sorted({r for r in group["rule"].dropna()}),
        }
    return report
