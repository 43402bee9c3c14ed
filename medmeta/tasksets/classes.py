"""Task classes as concepts of one code system, chosen in the settings.

Before classes are formed, the concept maps (``medmeta.terminology.concept_maps``) are applied to
the conditions (disease tasks) or the exposures' drugs (drug tasks), in the order given. The class
system is then the one the spec names (``sct``, ``icd10cm``, ``rxnorm``, ``atc``, any spelling
``systems.py`` knows, or a URI) or, with ``auto``, the system holding the most patients (ties by
URI): ICD-10-CM on medmeta's synthetic cohort, SNOMED CT on Synthea's FHIR exports. Class codes
are bare codes (``E11.9``, ``44054006``); the system is written once in the manifest. Rows in
other systems are no classes and are counted (``other_systems``), never dropped silently.

Which conditions are diseases (``conditions: disorders``, the default): SNOMED CT names the kind
of a concept in its display's semantic tag. A concept whose display ends in a tag other than
``(disorder)`` -- ``(finding)``, ``(situation)``, ``(procedure)``, ... -- is no disease class
("Full-time employment (finding)", "Body mass index 30+ - obesity (finding)"); it is listed as
excluded with reason ``not_a_disorder``. A display without a tag (older Synthea, most sources) says
nothing against the concept, so it is kept. Other systems are not filtered. ``conditions: all``
keeps every concept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pandas as pd

from medmeta.errors import MedmetaError
from medmeta.terminology.concept_maps import ConceptMap, apply_concept_maps, checked_system
from medmeta.terminology.systems import SNOMED, short_name

SEMANTIC_TAG = re.compile(r"\(([a-z][a-z /-]*)\)\s*$")
DISEASE_TAGS = ("disorder",)


@dataclass(frozen=True)
class ClassConcepts:
    """The rows whose concept is in the class system, with the class code in ``code``."""

    system: str  # canonical URI of the class codes
    chosen_by: str  # how the system was chosen, for the manifest
    rows: pd.DataFrame  # conditions or exposures in the class system; ``code`` and ``display`` the class concept
    other_systems: dict[str, int]  # URI -> patients whose rows are in another system (not classes)
    not_diseases: dict[str, dict]  # code -> display, patients, semantic tag (disease tasks, disorders only)
    displays: dict[str, str]  # class code -> a display (the most common one)

    def describe(self) -> dict:
        return {"uri": self.system, "short": short_name(self.system), "chosen_by": self.chosen_by,
                "patients_in_other_systems": dict(self.other_systems)}


def _choose(frame: pd.DataFrame, system_column: str, wanted: str, what: str) -> tuple[str, str]:
    patients = frame.dropna(subset=[system_column]).groupby(system_column)["patient_id"].nunique()
    if wanted == "auto":
        if patients.empty:
            raise MedmetaError(f"the snapshot holds no {what}: no classes to form")
        ranked = sorted(patients.items(), key=lambda kv: (-kv[1], kv[0]))
        return ranked[0][0], f"auto: the system with the most patients among the {what} ({ranked[0][1]})"
    system = checked_system(wanted, "--system")
    if system not in patients.index:
        held = ", ".join(f"{short_name(s)} ({n} patients)" for s, n in sorted(patients.items())) or "none"
        raise MedmetaError(f"--system {wanted}: no {what} in that system in the snapshot (systems there: {held})")
    return system, "settings"


def _displays(rows: pd.DataFrame, display: str) -> dict[str, str]:
    named = rows.dropna(subset=[display])
    if named.empty:
        return {}
    top = named.groupby(["code", display]).size().reset_index(name="n").sort_values(["code", "n"], ascending=[True, False])
    return dict(zip(top["code"].astype(str), top[display]))


def disease_concepts(conditions: pd.DataFrame, system: str, maps: list[ConceptMap], conditions_filter: str) -> ClassConcepts:
    """Conditions mapped, in the class system, diseases only (see the module's docstring)."""
    mapped = apply_concept_maps(conditions.dropna(subset=["patient_id", "code"]), maps, "system", "code", "display")
    uri, chosen = _choose(mapped, "system", system, "conditions")
    inside = mapped[mapped["system"] == uri].copy()
    other = mapped[mapped["system"] != uri].groupby("system")["patient_id"].nunique()
    not_diseases: dict[str, dict] = {}
    if conditions_filter == "disorders" and uri == SNOMED and len(inside):
        tags = inside["display"].fillna("").str.extract(SEMANTIC_TAG)[0]
        drop = tags.notna() & ~tags.isin(DISEASE_TAGS)
        for code, group in inside[drop].groupby("code", sort=True):
            not_diseases[str(code)] = {"display": group["display"].iloc[0], "patients": int(group["patient_id"].nunique()),
                                       "tag": str(tags[group.index[0]])}
        inside = inside[~drop]
    return ClassConcepts(uri, chosen, inside.reset_index(drop=True), {str(k): int(v) for k, v in other.items()},
                         not_diseases, _displays(inside, "display"))


def drug_concepts(exposures: pd.DataFrame, system: str, maps: list[ConceptMap]) -> ClassConcepts:
    """Exposures with their drug mapped (the stored concept kept in ``source_drug_*``), in the class system."""
    frame = exposures.dropna(subset=["patient_id", "drug_code"]).copy()
    for column in ("drug_system", "drug_code", "drug_display"):
        frame[f"source_{column}"] = frame[column]
    mapped = apply_concept_maps(frame, maps, "drug_system", "drug_code", "drug_display")
    uri, chosen = _choose(mapped, "drug_system", system, "medication exposures")
    inside = mapped[mapped["drug_system"] == uri].copy()
    other = mapped[mapped["drug_system"] != uri].groupby("drug_system")["patient_id"].nunique()
    inside["code"] = inside["drug_code"]
    return ClassConcepts(uri, chosen, inside.reset_index(drop=True), {str(k): int(v) for k, v in other.items()},
                         {}, _displays(inside, "drug_display"))
