"""The record feature vector of a case, standardised with meta-train statistics only.

Features, in this order:
- ``age_years`` (standardised);
- ``sex_female``, ``sex_male`` (0/1; other and unknown are both 0);
- ``lab:<code>`` per analyte measured (a numeric value) in at least ``min_fraction`` of the
  meta-train split's patients (the setting ``feature_min_patients_fraction``, default 0.2), sorted
  by name: the mean of the patient's values in the canonical unit (drug tasks: only values measured
  on or before the drug's start date, so nothing observed after treatment began), standardised.
  LOINC analytes are named by their bare code (``lab:4548-4``), others ``lab:<system>:<code>``
  (the short name for a known system, else its URI). Categorical observations (value null) are not
  features. Censored values (``<0.5``) enter the mean as their bound, and ``censored:<code>`` (0/1)
  says that one of the case's values was a bound (only for analytes with a censored value among the
  meta-train cases);
- drug tasks only, ``condition:<code>`` per condition concept held by at least ``min_fraction`` of
  the meta-train patients (0/1; the snapshot's main condition system by bare code, others
  ``condition:<system>:<code>``); disease tasks leave conditions out, since they are the label;
- ``missing:<code>`` per lab feature: 1 when the case has no value (the value is then imputed as the
  meta-train mean, i.e. 0 after standardisation).

Means and standard deviations come from the meta-train split's cases alone (population sd; an sd
of 0, or a feature meta-train never saw, standardises with mean 0 and sd 1) and are written in the
manifest, so a model can standardise a new patient exactly as it was trained.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from medmeta.terminology.systems import LOINC, short_name


@dataclass(frozen=True)
class RecordFeatures:
    names: list[str]  # the final vector's columns
    mean: list[float]  # per name; binary and missing indicators: 0
    std: list[float]  # per name; binary and missing indicators: 1
    min_patients_fraction: float = 0.0

    def as_dict(self) -> dict:
        return {"names": self.names, "mean": self.mean, "std": self.std, "dtype": "float32",
                "min_patients_fraction": self.min_patients_fraction,
                "imputation": "missing values take the meta-train mean (0 after standardising); "
                              "missing:<code> = 1 marks them",
                "censored": "a censored value enters the mean as its bound; censored:<code> = 1 marks it"}

    @property
    def raw_names(self) -> list[str]:
        return [n for n in self.names if not n.startswith("missing:")]


def _concept_name(system: pd.Series, code: pd.Series, bare: str) -> pd.Series:
    short = system.map(lambda s: s if s == bare else short_name(s))
    return np.where(system == bare, code, short + ":" + code)


def raw_features(cases: pd.DataFrame, tables: dict[str, pd.DataFrame], with_conditions: bool) -> pd.DataFrame:
    """One row per case (``cases`` order): age, sex, every analyte's mean (NaN when none), censored
    flags, conditions; ``fit`` picks the columns kept."""
    patients = tables["patients"].drop_duplicates("patient_id").set_index("patient_id")
    out = {}
    pid = cases["patient_id"].to_numpy()
    out["age_years"] = patients["age_years"].reindex(pid).astype("float64").to_numpy()
    sex = patients["sex"].reindex(pid).to_numpy()
    out["sex_female"] = (sex == "female").astype("float64")
    out["sex_male"] = (sex == "male").astype("float64")

    obs = tables["observations"].dropna(subset=["patient_id", "code", "value"])
    obs = obs.assign(feature=_concept_name(obs["system"].fillna(LOINC), obs["code"], LOINC),
                     censored=obs["censored"].fillna(False).astype("float64"))
    names = sorted(obs["feature"].unique().tolist())
    row = pd.DataFrame({"case": np.arange(len(cases)), "patient_id": pid})
    if "start_date" in cases:
        row["start_date"] = cases["start_date"].to_numpy()
    joined = row.merge(obs[["patient_id", "feature", "value", "censored", "effective_date"]], on="patient_id",
                       how="inner")
    if "start_date" in row:
        before = joined["start_date"].isna() | (joined["effective_date"] <= joined["start_date"])
        joined = joined[before]
    grouped = joined.groupby(["case", "feature"], sort=True)
    labs = grouped["value"].mean().unstack("feature").reindex(index=range(len(cases)), columns=names)
    flags = grouped["censored"].max().unstack("feature").reindex(index=range(len(cases)), columns=names)
    for name in names:
        out[f"lab:{name}"] = labs[name].to_numpy(dtype="float64")
    censored = sorted(obs.loc[obs["censored"] > 0, "feature"].unique().tolist())
    for name in censored:
        out[f"censored:{name}"] = flags[name].fillna(0).to_numpy(dtype="float64")
    if with_conditions:
        conditions = tables["conditions"].dropna(subset=["patient_id", "code"])
        conditions = conditions.assign(system=conditions["system"].fillna("unknown"))
        if len(conditions):
            main = conditions.groupby("system")["patient_id"].nunique().sort_values(ascending=False).index[0]
            conditions = conditions.assign(feature=_concept_name(conditions["system"], conditions["code"], main))
            codes = sorted(conditions["feature"].unique().tolist())
            has = pd.crosstab(conditions["patient_id"], conditions["feature"]).clip(upper=1).reindex(index=pid,
                                                                                                   columns=codes)
            for code in codes:
                out[f"condition:{code}"] = has[code].fillna(0).to_numpy(dtype="float64")
    return pd.DataFrame(out, index=pd.RangeIndex(len(cases)))


def fit(train: pd.DataFrame, patient_ids=None, min_fraction: float = 0.0) -> RecordFeatures:
    """Names and statistics from the meta-train cases' raw features: the labs and conditions of at
    least ``min_fraction`` of the meta-train patients (``patient_ids``, one per row of ``train``)."""
    ids = pd.Series(np.arange(len(train)) if patient_ids is None else np.asarray(patient_ids))
    total = ids.nunique()

    def common(column: str) -> bool:
        present = train[column].notna() if column.startswith("lab:") else train[column] > 0
        return total > 0 and ids[present.to_numpy()].nunique() >= min_fraction * total and bool(present.any())

    labs = [c for c in train.columns if c.startswith("lab:") and common(c)]
    kept_labs = {c[4:] for c in labs}
    columns = ["age_years", "sex_female", "sex_male", *labs]
    columns += [c for c in train.columns if c.startswith("censored:") and c[9:] in kept_labs and train[c].any()]
    columns += [c for c in train.columns if c.startswith("condition:") and common(c)]
    names, mean, std = [], [], []
    for column in columns:
        names.append(column)
        if column == "age_years" or column.startswith("lab:"):
            values = train[column].dropna().to_numpy(dtype="float64")
            m = float(values.mean()) if len(values) else 0.0
            s = float(values.std()) if len(values) else 1.0
            mean.append(m)
            std.append(s if s > 0 else 1.0)
        else:
            mean.append(0.0)
            std.append(1.0)
    for column in labs:
        names.append("missing:" + column[4:])
        mean.append(0.0)
        std.append(1.0)
    return RecordFeatures(names, mean, std, float(min_fraction))


def transform(raw: pd.DataFrame, spec: RecordFeatures) -> np.ndarray:
    """``raw`` standardised, imputed and with its missing indicators: float32 ``(N, len(names))``."""
    columns = spec.raw_names
    values = raw.reindex(columns=columns).to_numpy(dtype="float64", copy=True)
    binary = np.array([not (c == "age_years" or c.startswith("lab:")) for c in columns])
    values[:, binary] = np.nan_to_num(values[:, binary], nan=0.0)  # a flag meta-train had and this split lacks: 0
    z = (values - np.asarray(spec.mean[:len(columns)])) / np.asarray(spec.std[:len(columns)])
    labs = np.array([c.startswith("lab:") for c in columns], dtype=bool)
    missing = np.isnan(values[:, labs]).astype("float64")
    z = np.nan_to_num(z, nan=0.0)
    return np.concatenate([z, missing], axis=1).astype(np.float32)
