"""Raw record values to the model's standardised feature vector, exactly as the task set made it.

Columns (the names in the card's ``config.spec.features.record.names``, before standardisation):
``age_years`` (years), ``sex`` (female / male / other / unknown; or the 0/1 columns ``sex_female``
and ``sex_male``), ``lab:<LOINC>`` (the patient's mean value in the canonical unit of
medmeta/config/units.yaml; empty when not measured) and, for drug models, ``condition:<ICD-10-CM>``
(1 when the patient has it, else 0 or empty). A lab column left out counts as not measured. Values
are standardised with the meta-train means and standard deviations stored in the card; missing
values take the meta-train mean and set their ``missing:<LOINC>`` indicator, as in training.
"""

from __future__ import annotations

import math

import numpy as np

from medmeta.errors import MedmetaError

SEX = {"female": (1.0, 0.0), "f": (1.0, 0.0), "male": (0.0, 1.0), "m": (0.0, 1.0), "other": (0.0, 0.0),
       "unknown": (0.0, 0.0), "": (0.0, 0.0)}


def raw_columns(record_spec: dict) -> list[str]:
    """The columns a user gives: the feature names with ``sex`` for the two sex indicators, no ``missing:``."""
    names = [n for n in record_spec["names"] if not n.startswith("missing:")]
    out = []
    for name in names:
        if name in ("sex_female", "sex_male"):
            if "sex" not in out:
                out.append("sex")
        else:
            out.append(name)
    return out


def _number(text: str, column: str, case: str, source) -> float:
    if text == "":
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise MedmetaError(f"{source}: case {case}, column {column}: not a number") from None
    if not math.isfinite(value):
        raise MedmetaError(f"{source}: case {case}, column {column}: not a finite number")
    return value


def record_features(columns: dict[str, list[str]], ids: list[str], record_spec: dict, source) -> np.ndarray:
    """``[N, F]`` float32: the cases' raw ``columns`` (name -> cell text) standardised as in training."""
    from medmeta.tasksets.features import RecordFeatures, transform
    import pandas as pd

    names = [n for n in record_spec["names"] if not n.startswith("missing:")]
    known = set(raw_columns(record_spec)) | {"sex_female", "sex_male"}
    unknown = sorted(set(columns) - known)
    if unknown:
        raise MedmetaError(f"{source}: columns the model does not know: {', '.join(unknown[:8])}; it takes "
                           f"{', '.join(raw_columns(record_spec)[:8])}... (see its card: config.spec.features.record)")
    for needed in ("age_years",):
        if needed in names and needed not in columns:
            raise MedmetaError(f"{source}: no {needed} column; a records model needs it")
    if "sex_female" in names and "sex" not in columns and not {"sex_female", "sex_male"} <= set(columns):
        raise MedmetaError(f"{source}: no sex column (female, male, other or unknown)")
    raw = pd.DataFrame(index=range(len(ids)))
    for name in names:
        if name in ("sex_female", "sex_male") and "sex" in columns:
            index = 0 if name == "sex_female" else 1
            values = []
            for case, text in zip(ids, columns["sex"]):
                if text.lower() not in SEX:
                    raise MedmetaError(f"{source}: case {case}, column sex: not female, male, other or unknown")
                values.append(SEX[text.lower()][index])
            raw[name] = values
        elif name in columns:
            raw[name] = [_number(t, name, c, source) for c, t in zip(ids, columns[name])]
        else:
            raw[name] = math.nan  # a lab (or condition) not given: not measured
        if (name.startswith("condition:") or name.startswith("sex_")):
            raw[name] = raw[name].fillna(0.0)
    features = RecordFeatures(list(record_spec["names"]), list(record_spec["mean"]), list(record_spec["std"]))
    return transform(raw, features)
