"""The record feature vector of a case, standardised with meta-train statistics only.

Features, in this order:
- ``age_years`` (standardised);
- ``sex_female``, ``sex_male`` (0/1; other and unknown are both 0);
- ``lab:<LOINC>`` per analyte in the snapshot (sorted by code): the mean of the patient's values
  in the canonical unit (drug tasks: only values measured on or before the drug's start date, so
  nothing observed after treatment began), standardised;
- drug tasks only, ``condition:<ICD-10-CM>`` per condition code in the snapshot (0/1); disease
  tasks leave conditions out, since they are the label;
- ``missing:<LOINC>`` per analyte: 1 when the case has no value (the value is then imputed as the
  meta-train mean, i.e. 0 after standardisation).

Means and standard deviations come from the meta-train split's cases alone (population sd; an sd
of 0, or a feature meta-train never saw, standardises with mean 0 and sd 1) and are written in the
manifest, so a model can standardise a new patient exactly as it was trained.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class RecordFeatures:
    names: list[str]  # the final vector's columns
    mean: list[float]  # per name; binary and missing indicators: 0
    std: list[float]  # per name; binary and missing indicators: 1

    def as_dict(self) -> dict:
        return {"names": self.names, "mean": self.mean, "std": self.std, "dtype": "float32",
                "imputation": "missing values take the meta-train mean (0 after standardising); "
                              "missing:<LOINC> = 1 marks them"}


def raw_features(cases: pd.DataFrame, tables: dict[str, pd.DataFrame], with_conditions: bool) -> pd.DataFrame:
    """One row per case (``cases`` order): age, sex, lab means (NaN when none), conditions."""
    patients = tables["patients"].drop_duplicates("patient_id").set_index("patient_id")
    out = pd.DataFrame(index=pd.RangeIndex(len(cases)))
    pid = cases["patient_id"].to_numpy()
    out["age_years"] = patients["age_years"].reindex(pid).astype("float64").to_numpy()
    sex = patients["sex"].reindex(pid).to_numpy()
    out["sex_female"] = (sex == "female").astype("float64")
    out["sex_male"] = (sex == "male").astype("float64")

    obs = tables["observations"].dropna(subset=["patient_id", "code", "value"])
    loincs = sorted(obs["code"].unique().tolist())
    row = pd.DataFrame({"case": np.arange(len(cases)), "patient_id": pid})
    if "start_date" in cases:
        row["start_date"] = cases["start_date"].to_numpy()
    joined = row.merge(obs[["patient_id", "code", "value", "effective_date"]], on="patient_id", how="inner")
    if "start_date" in row:
        before = joined["start_date"].isna() | (joined["effective_date"] <= joined["start_date"])
        joined = joined[before]
    labs = joined.groupby(["case", "code"], sort=True)["value"].mean().unstack("code")
    labs = labs.reindex(index=range(len(cases)), columns=loincs)
    for code in loincs:
        out[f"lab:{code}"] = labs[code].to_numpy(dtype="float64")
    if with_conditions:
        conditions = tables["conditions"].dropna(subset=["patient_id", "code"])
        codes = sorted(conditions["code"].unique().tolist())
        has = pd.crosstab(conditions["patient_id"], conditions["code"]).clip(upper=1).reindex(index=pid, columns=codes)
        for code in codes:
            out[f"condition:{code}"] = has[code].fillna(0).to_numpy(dtype="float64")
    return out


def fit(train: pd.DataFrame) -> RecordFeatures:
    """Names and statistics from the meta-train cases' raw features."""
    names, mean, std = [], [], []
    continuous = [c for c in train.columns if c == "age_years" or c.startswith("lab:")]
    for column in train.columns:
        names.append(column)
        if column in continuous:
            values = train[column].dropna().to_numpy(dtype="float64")
            m = float(values.mean()) if len(values) else 0.0
            s = float(values.std()) if len(values) else 1.0
            mean.append(m)
            std.append(s if s > 0 else 1.0)
        else:
            mean.append(0.0)
            std.append(1.0)
    for column in train.columns:
        if column.startswith("lab:"):
            names.append("missing:" + column[4:])
            mean.append(0.0)
            std.append(1.0)
    return RecordFeatures(names, mean, std)


def transform(raw: pd.DataFrame, spec: RecordFeatures) -> np.ndarray:
    """``raw`` standardised, imputed and with its missing indicators: float32 ``(N, len(names))``."""
    values = raw.to_numpy(dtype="float64")
    k = values.shape[1]
    z = (values - np.asarray(spec.mean[:k])) / np.asarray(spec.std[:k])
    labs = np.array([c.startswith("lab:") for c in raw.columns])
    missing = np.isnan(values[:, labs]).astype("float64")
    z = np.nan_to_num(z, nan=0.0)
    return np.concatenate([z, missing], axis=1).astype(np.float32)
