"""Which displays the store keeps: the labels of real vocabularies, never text one record carries.

A coding's display is free text: a person can type a patient's name into it. It can not be checked
against a vocabulary medmeta does not ship, yet task sets and the ``--conditions disorders`` filter
rely on the real vocabularies' labels ("Hypertension (disorder)"). The rule, applied at
consolidation over the whole snapshot:

- a display is kept when the same (system, code, display) is attested by at least
  ``display_min_patients`` distinct patients (``IngestConfig``, default 3): a vocabulary's label is
  what every export of that concept says, while a name typed into one record is attested by one
  patient (and a name typed into the records of k different patients is no longer one patient's);
- a display that comes from a vocabulary table (an OMOP CDM CONCEPT table's concept_name, applied by
  ``medmeta.records.omop_concepts`` after this rule) is kept as the vocabulary's own label;
- every other display is null in the store (the code is kept), counted per column in the
  manifest's ``values_withheld``.
"""

from __future__ import annotations

import pandas as pd

DISPLAY_COLUMNS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "conditions": (("system", "code", "display"),),
    "observations": (("system", "code", "display"),),
    "medication_exposures": (("drug_system", "drug_code", "drug_display"),),
}


def keep_attested_displays(frame: pd.DataFrame, table: str, min_patients: int) -> tuple[pd.DataFrame, dict[str, int]]:
    """``frame`` with every display not attested by ``min_patients`` distinct patients set to null, and
    the number withheld per ``<table>.<column>``."""
    withheld: dict[str, int] = {}
    for system, code, display in DISPLAY_COLUMNS.get(table, ()):
        present = frame[display].notna()
        if not present.any():
            continue
        rows = frame.loc[present, [system, code, display, "patient_id"]].astype(object)
        rows = rows.where(rows.notna(), "")  # a null system groups with itself
        patients = rows.groupby([system, code, display], sort=False)["patient_id"].transform("nunique")
        dropped = patients.index[patients.to_numpy() < min_patients]
        if len(dropped):
            frame = frame.copy() if not withheld else frame
            frame.loc[dropped, display] = None
            withheld[f"{table}.{display}"] = len(dropped)
    return frame, withheld
