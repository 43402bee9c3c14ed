"""Is this CSV / Parquet table a compound activity table, and which columns say what? Plus the units.

Recognised from the header alone (case ignored, blanks and hyphens read as underscores), never from the data:

- a structure column: ``smiles``, ``canonical_smiles``, ``smiles_canonical``, ``isomeric_smiles``,
  ``compound_smiles``, ``molecule_smiles``, ``mol_smiles``;
- an activity: a value column (``standard_value``, ``value``, ``activity``, ``activity_value``, ``exp_mean``,
  ``measurement``, ``pchembl_value``, ``pactivity``, ``pki``, ``pic50``, ``pec50``, ``pkd``), its unit in a unit
  column (``standard_units``, ``units``, ``unit``, ``activity_units``) or in the header (``exp_mean [nM]``,
  ``value (uM)``), a relation column (``standard_relation``) making a row whose value is a bound (``>``, ``<``)
  a rejected row (``censored_activity``); or a binary label column (``active``, ``is_active``, ``label``, ``activity_label``,
  ``activity_class``, ``binary_label``);
- the task: a target or assay column (``task``, ``target``, ``target_chembl_id``, ``target_id``, ``assay_chembl_id``,
  ``assay_id``, ``assay``), with an activity type column (``standard_type``, ``activity_type``, ``type``) when
  there is one; without one, the file name ``CHEMBL<digits>_<type>``, the type one of ``FILE_NAME_TYPES`` (so no
  other part of a file name becomes data; the MoleculeACE tables: header
  ``smiles,exp_mean [nM],y,cliff_mol,split``; ``y`` is ignored, pActivity is recomputed from the value).

A table with a structure column and an activity is an activity table (``recognise``); any other is
not (records: an OMOP table or a site mapping's). A table that is both is refused by the caller.

Units: every value becomes pActivity = -log10(molar): nM, uM (µM, μM), pM, mM, M, also as ``nmol/L`` etc.;
a p-scaled value (``pKi``, ``pIC50``, ``pEC50``, ``pKd``, ``pActivity``, ``pchembl_value``, unit ``p`` or
``-log(M)``) is taken as it is. No RDKit here: this module is imported while sniffing.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from medmeta.errors import ACTIVITY_NO_TASK, ACTIVITY_UNIT_UNKNOWN, NON_POSITIVE_ACTIVITY, UNKNOWN_UNIT, Rejected

SMILES_COLUMNS = ("smiles", "canonical_smiles", "smiles_canonical", "isomeric_smiles", "compound_smiles",
                  "molecule_smiles", "mol_smiles")
TASK_COLUMNS = ("task", "target", "target_chembl_id", "target_id", "assay_chembl_id", "assay_id", "assay")
TYPE_COLUMNS = ("standard_type", "activity_type", "type")
VALUE_COLUMNS = ("standard_value", "value", "activity", "activity_value", "exp_mean", "measurement")
P_SCALED_COLUMNS = ("pchembl_value", "pactivity", "pki", "pic50", "pec50", "pkd", "pxc50")
UNIT_COLUMNS = ("standard_units", "units", "unit", "activity_units")
RELATION_COLUMNS = ("standard_relation", "relation", "activity_relation")
LABEL_COLUMNS = ("active", "is_active", "label", "activity_label", "activity_class", "binary_label")

# molar exponent of each concentration unit: pActivity = exponent - log10(value)
MOLAR_EXPONENT = {"m": 0, "mm": 3, "um": 6, "nm": 9, "pm": 12}
P_UNITS = frozenset({"p", "-log(m)", "-log10(m)", "log(1/m)", "pactivity", "pki", "pic50", "pec50", "pkd",
                     "pchembl", "pchembl_value"})
LABEL_TRUE = frozenset({"1", "1.0", "true", "t", "yes", "y", "active"})
LABEL_FALSE = frozenset({"0", "0.0", "false", "f", "no", "n", "inactive"})
CHEMBL_FILE = re.compile(r"^(CHEMBL\d+)_([A-Za-z0-9]+)$")
# The activity types a file name may name (CHEMBL237_EC50): only these, so no other part of a file name
# (which can carry PHI) ever becomes data; a task column names any type.
FILE_NAME_TYPES = frozenset({"Ki", "Kd", "IC50", "EC50", "AC50", "GI50", "ED50", "XC50", "Potency", "Activity",
                             "Inhibition", "Kb", "Km"})
_HEADER_UNIT = re.compile(r"^(?P<name>.*?)\s*[\[(]\s*(?P<unit>[^\])]+?)\s*[\])]\s*$")


@dataclass(frozen=True)
class ActivityLayout:
    """Which columns of an activity table say what (column names as the file spells them)."""

    smiles: str
    task: str | None  # a target / assay column, else None and the file names the task
    activity_type: str | None  # a type column (Ki, IC50, ...), else None
    value: str | None  # the value column, or None for a label-only table
    unit: str | None  # the unit from the header (``exp_mean [nM]``), or "p" for a p-scaled column
    unit_column: str | None  # a per-row unit column (wins over ``unit`` where a cell names one)
    label: str | None  # a binary label column
    relation: str | None  # a relation column (=, <, >): a row whose value is a bound is rejected
    file_task: str | None  # CHEMBL237_Ki from the file name, when there is no task column
    file_target: str | None  # CHEMBL237
    file_type: str | None  # Ki

    def describe(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def _key(name) -> str:
    """A column name's key: lower case, blanks and hyphens as underscores (ChEMBL's web export writes
    ``Standard Value``, ``Target ChEMBL ID``)."""
    return re.sub(r"[\s-]+", "_", str(name).strip().lower())


def _split_header_unit(name) -> tuple[str, str | None]:
    match = _HEADER_UNIT.match(str(name).strip())
    if match is None:
        return _key(name), None
    return _key(match["name"]), match["unit"]


def _find(columns, names) -> str | None:
    by_key = {_key(c): c for c in reversed(list(columns))}
    return next((by_key[n] for n in names if n in by_key), None)


def recognise(columns, file_name: str) -> ActivityLayout | None:
    """The layout when ``columns`` (a table's header) are an activity table's, else None.

    Raises ``Rejected`` for a table that is one (a structure column and an activity) but can not be
    read as one: no task column and no ``CHEMBL<digits>_<type>`` file name (``activity_no_task``); a
    value whose unit neither the header nor a unit column names (``activity_unit_unknown``)."""
    columns = [str(c) for c in columns]
    smiles = _find(columns, SMILES_COLUMNS)
    if smiles is None:
        return None
    value, unit = None, None
    for column in columns:  # a value column, its unit possibly in the header
        name, header_unit = _split_header_unit(column)
        if name in P_SCALED_COLUMNS:
            value, unit = column, "p"
            break
        if name in VALUE_COLUMNS and value is None:
            value, unit = column, header_unit
    label = _find(columns, LABEL_COLUMNS)
    if value is None and label is None:
        return None
    unit_column = _find(columns, UNIT_COLUMNS) if value is not None and unit != "p" else None
    if value is not None and unit is None and unit_column is None:
        raise Rejected(ACTIVITY_UNIT_UNKNOWN, "the activity value column names no unit (in its header, as "
                                              "'value [nM]', or in a unit column such as standard_units)")
    if unit is not None and unit != "p":
        unit_or_none(unit)  # a header unit that is not one: the whole table is unreadable
    task = _find(columns, TASK_COLUMNS)
    file_task = file_target = file_type = None
    if task is None:
        stem = PurePosixPath(file_name).name.split(".", 1)[0]
        match = CHEMBL_FILE.match(stem)
        if match is None or match[2] not in FILE_NAME_TYPES:
            raise Rejected(ACTIVITY_NO_TASK, "the activity table has no target or assay column (target_chembl_id, "
                                             "assay_chembl_id, target, ...) and its file name is not "
                                             "CHEMBL<digits>_<type> with a known activity type (Ki, IC50, EC50, ...)")
        file_task, file_target, file_type = stem, match[1], match[2]
    relation = _find(columns, RELATION_COLUMNS) if value is not None else None
    return ActivityLayout(smiles, task, _find(columns, TYPE_COLUMNS), value, unit, unit_column, label, relation,
                          file_task, file_target, file_type)


def normal_unit(unit: str) -> str:
    """A unit's key: lower case, no blanks, micro signs as u, ``/L`` molar spellings folded (nmol/L -> nm)."""
    text = str(unit).strip().replace("\u00b5", "u").replace("\u03bc", "u").lower().replace(" ", "")
    text = re.sub(r"^([munp]?)mol/l$", r"\1m", text)
    text = re.sub(r"^([munp]?)mol/dm3$", r"\1m", text)
    return text


def unit_or_none(unit: str) -> str:
    """The unit's key (``normal_unit``) when it is a known concentration or p-scale; ``Rejected`` otherwise."""
    key = normal_unit(unit)
    if key in MOLAR_EXPONENT or key in P_UNITS:
        return key
    raise Rejected(UNKNOWN_UNIT, "the activity unit is not one of M, mM, uM, nM, pM or a p-scale (pKi, pIC50, ...)")


def p_activity(value: float, unit: str) -> float:
    """-log10(molar) of ``value`` in ``unit`` (a key of ``unit_or_none``); ``Rejected`` for 0 or below."""
    if unit in P_UNITS:
        return float(value)
    if not value > 0:
        raise Rejected(NON_POSITIVE_ACTIVITY, "an activity concentration of 0 or below has no pActivity")
    return MOLAR_EXPONENT[unit] - math.log10(value)


def task_of(target: str, activity_type: str | None) -> str:
    """The task id: ``<target>_<type>`` (CHEMBL237_Ki), or the target alone without a type."""
    return f"{target}_{activity_type}" if activity_type else target


def label_value(cell) -> bool | None:
    """A binary label cell as a bool; None for an unreadable one."""
    text = _key(cell)
    if text in LABEL_TRUE:
        return True
    if text in LABEL_FALSE:
        return False
    return None
