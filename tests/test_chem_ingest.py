"""Compound activity tables (issue 15, item 1): recognised from their header, structures standardised with
RDKit, units to pActivity, bad rows quarantined with their reasons, ``compound_activities`` in the
snapshot, validated, and task sets of kind ``target`` split by ChEMBL target.

Real data: slices of the MoleculeACE ChEMBL tables (copied from the installed wheel at run time) and
real RDKit. Expected numbers are computed here with the csv module and math, never with medmeta."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from medmeta.chem.activity_table import p_activity, recognise, unit_or_none
from medmeta.errors import Rejected
from medmeta.landing.sniff import activity_layout

pytestmark = pytest.mark.skipif(importlib.util.find_spec("rdkit") is None
                                or importlib.util.find_spec("MoleculeACE") is None,
                                reason="the chem extra (rdkit) and the moleculeace wheel are needed")

MOLECULEACE_HEADER = ["smiles", "exp_mean [nM]", "y", "cliff_mol", "split"]
SLICE = 120  # rows per MoleculeACE table in the flow tests


def _rows(name: str, n: int | None = None) -> list[dict]:
    from medmeta.chem.moleculeace import tables_dir

    with open(tables_dir() / f"{name}.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return rows[:n] if n else rows


def _write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# -- recognition -----------------------------------------------------------------------------------

def test_moleculeace_header_and_file_name_make_the_task():
    layout = recognise(MOLECULEACE_HEADER, "site/CHEMBL237_EC50.csv")
    assert (layout.smiles, layout.value, layout.unit) == ("smiles", "exp_mean [nM]", "nM")
    assert (layout.file_task, layout.file_target, layout.file_type) == ("CHEMBL237_EC50", "CHEMBL237", "EC50")


def test_chembl_export_header_is_recognised_with_its_unit_column():
    layout = recognise(["Molecule ChEMBL ID", "Smiles", "Standard Type", "Standard Relation", "Standard Value",
                        "Standard Units", "pChEMBL Value", "Assay ChEMBL ID", "Target ChEMBL ID"], "export.csv")
    assert (layout.smiles, layout.task, layout.activity_type, layout.value, layout.unit) == (  # ChEMBL's web export
        "Smiles", "Target ChEMBL ID", "Standard Type", "pChEMBL Value", "p")


def test_activity_without_a_task_or_unit_is_refused_with_its_reason():
    for name in ("my_compounds.csv", "CHEMBL237_JaneDoe.csv"):  # only a known type: a name never becomes data
        with pytest.raises(Rejected) as no_task:
            recognise(MOLECULEACE_HEADER, name)
        assert no_task.value.code == "activity_no_task" and "Jane" not in no_task.value.reason
    with pytest.raises(Rejected) as no_unit:
        recognise(["smiles", "target", "standard_value"], "x.csv")
    assert no_unit.value.code == "activity_unit_unknown"


def test_a_records_csv_is_never_an_activity_table_nor_the_reverse(tmp_path):
    from medmeta.records.site_mappings import install_default_sites, load_site_mappings
    from medmeta.records.tabular import is_records_header

    install_default_sites(tmp_path / "sites")
    mappings = load_site_mappings(tmp_path / "sites")
    patients = ["MRN", "LAST_NAME", "FIRST_NAME", "DOB", "GENDER", "STREET_ADDRESS", "CITY", "PHONE"]
    labs = ["MRN", "LAB_DATE", "GLUCOSE_MGDL", "value", "units", "target"]  # value/unit/target words, no SMILES
    for header in (patients, labs):
        assert is_records_header(header, "csv", mappings)
        assert activity_layout(header, "CHEMBL237_Ki.csv", True) is None
    assert not is_records_header(MOLECULEACE_HEADER, "csv", mappings)
    assert activity_layout(MOLECULEACE_HEADER, "CHEMBL237_Ki.csv", False) is not None
    with pytest.raises(Rejected) as both:  # a records layout with structures and activities: refused, not guessed
        activity_layout(labs + ["smiles", "activity [nM]"], "CHEMBL237_Ki.csv", True)
    assert both.value.code == "ambiguous_table"


# -- units ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, unit, expected", [
    (1, "nM", 9.0), (1000, "nM", 6.0), (1, "uM", 6.0), (1, "\u00b5M", 6.0), (1, "\u03bcM", 6.0),
    (1, "pM", 12.0), (1, "mM", 3.0), (1, "M", 0.0), (250, "nmol/L", 9 - math.log10(250)),
    (7.5, "pKi", 7.5), (6.2, "p", 6.2),
])
def test_units_become_minus_log10_molar(value, unit, expected):
    assert p_activity(value, unit_or_none(unit)) == pytest.approx(expected)


@pytest.mark.parametrize("value, unit, code", [(0, "nM", "non_positive_activity"), (-3, "uM", "non_positive_activity"),
                                               (5, "mg/L", "unknown_unit"), (5, "%", "unknown_unit")])
def test_bad_values_and_units_have_their_reason(value, unit, code):
    with pytest.raises(Rejected) as error:
        p_activity(value, unit_or_none(unit))
    assert error.value.code == code


def test_moleculeace_values_agree_with_its_own_y():
    """MoleculeACE's y is -log10(nM); pActivity = 9 + y (the tables' own column, read with csv)."""
    for row in _rows("CHEMBL2835_Ki", 200):
        assert p_activity(float(row["exp_mean [nM]"]), unit_or_none("nM")) == pytest.approx(9 + float(row["y"]), abs=1e-6)


# -- standardisation -----------------------------------------------------------------------------

def test_salts_are_stripped_and_charges_neutralised_to_one_key():
    from medmeta.chem.standardise import standardise

    acid = standardise("CC(=O)O")
    assert standardise("CC(=O)[O-].[Na+]").compound_key == acid.compound_key
    assert standardise("CC(=O)[O-].[Na+]").stripped and not acid.stripped
    amine = standardise("CCN")
    assert standardise("CC[NH3+].[Cl-]").compound_key == amine.compound_key == standardise("CC[NH3+]").compound_key
    assert amine.compound_key == "QUSNBJAOOMFDIB-UHFFFAOYSA-N"  # ethylamine's InChIKey
    nicotine = standardise("CN1CCC[C@H]1c1cccnc1")  # a tartrate salt: the larger organic fragment is the parent
    assert standardise("OC(=O)C(O)C(O)C(O)=O.CN1CCC[C@H]1c1cccnc1").compound_key == nicotine.compound_key


@pytest.mark.parametrize("smiles, code", [("C1CC(", "unparseable_smiles"), ("", "unparseable_smiles"),
                                          ("CCCC.CCCN", "ambiguous_mixture"), ("[Na+].[Cl-]", "no_organic_fragment")])
def test_structures_without_one_parent_are_rejected(smiles, code):
    from medmeta.chem.standardise import standardise

    with pytest.raises(Rejected) as error:
        standardise(smiles)
    assert error.value.code == code and (not smiles or smiles not in error.value.reason)


# -- rows and aggregation ------------------------------------------------------------------------

BAD_ROWS = [  # (smiles, target, type, value, unit) -> reason code (None: kept)
    ("CCN", "CHEMBL9", "Ki", "100", "nM", None),
    ("CC[NH3+].[Cl-]", "CHEMBL9", "Ki", "0.1", "uM", None),  # the same compound in uM: aggregated with the row above
    ("C1CC(", "CHEMBL9", "Ki", "5", "nM", "unparseable_smiles"),
    ("CCCC.CCCN", "CHEMBL9", "Ki", "5", "nM", "ambiguous_mixture"),
    ("CCO", "CHEMBL9", "Ki", "0", "nM", "non_positive_activity"),
    ("CCO", "CHEMBL9", "Ki", "-2", "uM", "non_positive_activity"),
    ("CCO", "CHEMBL9", "Ki", "", "nM", "missing_activity"),
    ("CCO", "CHEMBL9", "Ki", "12", "furlongs", "unknown_unit"),
    ("CCO", "CHEMBL9", "Ki", "12", "", "missing_unit"),
    ("CCO", "CHEMBL9", "Ki", "twelve", "nM", "non_numeric_value"),
    ("CCO", "", "Ki", "12", "nM", "missing_task"),
    ("CCCO", "CHEMBL9", "Ki", "3", "pM", None),
    ("CCCCO", "CHEMBL9", "IC50", "2", "uM", None),
]
HEADER = ["canonical_smiles", "target_chembl_id", "standard_type", "standard_value", "standard_units"]


def test_each_bad_row_is_rejected_with_its_reason_and_the_rest_go_on():
    from medmeta.chem.activity_rows import stage_activities
    from medmeta.chem.consolidate_activities import aggregate
    from medmeta.records.tabular import read_csv

    data = io.StringIO()
    csv.writer(data).writerows([HEADER] + [list(r[:5]) for r in BAD_ROWS])
    frame, unreadable = read_csv(data.getvalue().encode())
    layout = recognise(frame.columns, "export.csv")
    staged = stage_activities(frame, layout, "default", "f" * 64)
    expected = {f"row {i + 2}": code for i, r in enumerate(BAD_ROWS) if (code := r[5])}
    assert {e.location: e.code for e in staged.rejects} == expected
    assert staged.table.num_rows + len(staged.rejects) == len(BAD_ROWS) and not unreadable
    assert all("CCO" not in e.reason and "furlongs" not in e.reason for e in staged.rejects)  # no data in messages
    assert staged.units == {"nm": 1, "um": 2, "pm": 1} and staged.fragments_stripped == 1
    table, conflicts = aggregate(staged.table.to_pandas())
    assert conflicts.empty and len(table) == 3
    amine = table[table["compound_key"] == "QUSNBJAOOMFDIB-UHFFFAOYSA-N"].iloc[0]
    assert (amine["task"], amine["n_measurements"], amine["smiles"]) == ("CHEMBL9_Ki", 2, "CCN")
    assert amine["p_activity"] == pytest.approx(7.0)  # 100 nM and 0.1 uM are both 1e-7 M
    assert set(table["task"]) == {"CHEMBL9_Ki", "CHEMBL9_IC50"}
    assert table.loc[table["smiles"] == "CCCO", "p_activity"].iloc[0] == pytest.approx(12 - math.log10(3))


def test_a_bound_is_not_a_measurement():
    from medmeta.chem.activity_rows import stage_activities
    from medmeta.records.tabular import read_csv

    text = ("Smiles;Standard Type;Standard Relation;Standard Value;Standard Units;Target ChEMBL ID\n"
            "CCO;Ki;'=';10;nM;CHEMBL5\nCCCO;Ki;'>';10000;nM;CHEMBL5\nCCCCO;Ki;;20;nM;CHEMBL5\n")
    frame, _ = read_csv(text.encode())
    staged = stage_activities(frame, recognise(frame.columns, "x.csv"), "default", "c" * 64)
    assert [(e.location, e.code) for e in staged.rejects] == [("row 3", "censored_activity")]
    assert staged.table["task"].to_pylist() == ["CHEMBL5_Ki", "CHEMBL5_Ki"]


def test_a_compound_labelled_both_ways_in_a_task_is_rejected_the_rest_kept():
    from medmeta.chem.activity_rows import stage_activities
    from medmeta.chem.consolidate_activities import aggregate
    from medmeta.records.tabular import read_csv

    text = "smiles,assay_chembl_id,active\nCCN,CHEMBL5,1\nCC[NH3+],CHEMBL5,0\nCCO,CHEMBL5,1\nCCCO,CHEMBL5,maybe\n"
    frame, _ = read_csv(text.encode())
    staged = stage_activities(frame, recognise(frame.columns, "x.csv"), "default", "a" * 64)
    assert [e.code for e in staged.rejects] == ["invalid_label"]
    table, conflicts = aggregate(staged.table.to_pandas())
    assert list(table["smiles"]) == ["CCO"] and table["active"].tolist() == [True]
    assert table["activity_type"].tolist() == ["label"] and table["p_activity"].isna().all()
    assert len(conflicts) == 2 and conflicts["reason"].str.startswith("conflicting_labels").all()


# -- the whole path: ingest (Prefect flow), the store, validation, task sets --------------------------

@pytest.fixture(scope="module")
def landing(tmp_path_factory):
    """Slices of three MoleculeACE tables (two targets) and of a fourth target, a ChEMBL-like export with
    bad rows (and a fourth target), a table whose values are all equal, an empty table, a records CSV."""
    from medmeta.chem.moleculeace import copy_tables

    root = tmp_path_factory.mktemp("chem") / "landing"
    names = ["CHEMBL2835_Ki", "CHEMBL237_Ki", "CHEMBL237_EC50", "CHEMBL1862_Ki"]
    for path in copy_tables(root / "moleculeace", names):  # sliced: the fast suite's budget
        lines = path.read_text().splitlines(keepends=True)
        path.write_text("".join(lines[:SLICE + 1]))
    rows = [list(r[:5]) for r in BAD_ROWS] + [["c1ccccc1O", "CHEMBL9", "Ki", "1e-9", "nM"]]  # pKi 18: implausible
    _write_csv(root / "chembl" / "export.csv", HEADER, rows)
    _write_csv(root / "flat" / "CHEMBL7_Ki.csv", MOLECULEACE_HEADER,
               [[s, "10", "-1", "0", "train"] for s in ("CCO", "CCCO", "CCCCO", "CCCCCO")])
    _write_csv(root / "flat" / "CHEMBL8_IC50.csv", MOLECULEACE_HEADER, [])
    _write_csv(root / "records" / "patients.csv", ["MRN", "LAST_NAME", "FIRST_NAME", "DOB", "GENDER",
                                                   "STREET_ADDRESS", "CITY", "PHONE"],
               [["M1", "Doe", "Jan", "01/02/1960", "F", "1 Main St", "Town", "555-0100"]])
    counts = {n: len(_rows(n, SLICE)) for n in names}
    return root, counts


RULES = str(Path(__file__).resolve().parents[1] / "validation" / "deliveries" / "compounds.yaml")


def _ingest(root: Path, home: Path) -> dict:
    from flows.ingest import ingest_flow
    from tests.conftest import TEST_KEY

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDMETA_PSEUDONYM_KEY", TEST_KEY)
        return ingest_flow(str(root), str(home), rules=RULES, workers=1)  # in-process: no pool to boot


@pytest.fixture(scope="module")
def ingested(landing, tmp_path_factory, prefect_api):
    root, counts = landing
    home = tmp_path_factory.mktemp("chemhome") / "h"
    return root, counts, home, _ingest(root, home)


def test_every_file_and_row_is_accounted_for(ingested):
    from medmeta.ingest.summary import quarantined_names

    root, counts, home, summary = ingested
    assert (summary["files_seen"], summary["files_ingested"], summary["files_quarantined"]) == (8, 7, 1)
    [empty] = quarantined_names(summary)
    assert empty["path"] == "flat/CHEMBL8_IC50.csv" and empty["reason"].startswith("empty_table:")
    assert summary["tables"]["patients"] == 1  # the records CSV went to the records, not to the compounds
    store = pd.read_parquet(home / "store" / "compound_activities.parquet")
    assert not store.duplicated(["task", "compound_key"]).any()
    per_task = store.groupby("task")["n_measurements"].sum()
    for name, n in counts.items():  # every MoleculeACE row is a measurement of its task (they all parse)
        assert per_task[name] == n
    assert (per_task["CHEMBL9_Ki"], per_task["CHEMBL9_IC50"], per_task["CHEMBL7_Ki"]) == (4, 1, 4)
    assert store["source"].str.fullmatch("[0-9a-f]{64}").all() and set(store["site"]) <= {"default"} | {
        s for s in store["site"] if s.startswith("folder-")}  # landing folder names as tokens, never as written
    assert not {"moleculeace", "chembl", "flat"} & set(store["site"])
    rejected = pd.read_parquet(home / "store" / "record_quarantine.parquet")
    assert sorted(rejected["reason"].str.split(":").str[0]) == sorted(r[5] for r in BAD_ROWS if r[5])
    manifest = json.loads((home / "store" / "manifest.json").read_text())
    assert "compound_activities" in manifest["table_sha256"]  # in the snapshot id
    assert manifest["compound_activity"]["rows_read"] == sum(counts.values()) + len(BAD_ROWS) + 1 + 4


def test_the_rules_gate_quarantines_an_implausible_pactivity(ingested):
    root, counts, home, summary = ingested
    assert summary["validation"]["success"], summary["validation"]
    quarantine = pd.read_parquet(home / "validation" / summary["snapshot"] / "quarantine.parquet")
    flagged = quarantine[quarantine["table"] == "compound_activities"]
    assert flagged["expectations"].tolist() == ["p_activity_plausible"]
    kept = pd.read_parquet(home / "validation" / summary["snapshot"] / "tables" / "compound_activities.parquet")
    assert len(kept) == summary["tables"]["compound_activities"] - 1 and (kept["p_activity"] <= 14).all()


def test_a_rerun_changes_nothing(ingested):
    root, counts, home, first = ingested
    before = {p: p.read_bytes() for p in sorted((home / "store").glob("*.parquet"))}
    again = _ingest(root, home)
    assert (again["files_ingested"], again["files_unchanged"], again["files_quarantined"]) == (0, 7, 1)
    assert again["snapshot"] == first["snapshot"]
    assert {p: p.read_bytes() for p in sorted((home / "store").glob("*.parquet"))} == before


def test_target_task_sets_label_by_median_split_by_target_and_refuse_a_single_class(ingested):
    from medmeta.chem.target_tasks import load_target_taskset
    from medmeta.home import Home
    from medmeta.tasksets.build import build_taskset
    from medmeta.tasksets.spec import make_spec
    from medmeta.tasksets.splits import SPLITS

    root, counts, home, _ = ingested
    spec = make_spec("target", seed=0)
    manifest = build_taskset(Home.at(home), spec)
    # CHEMBL7_Ki: every value 10 nM; CHEMBL9_IC50: a single compound. One class each: refused, named
    assert [r["task"] for r in manifest["refused"]] == ["CHEMBL7_Ki", "CHEMBL9_IC50"]
    assert all(r["reason"].startswith("single_class") and r["task"] in r["reason"] for r in manifest["refused"])
    assert "CHEMBL9_Ki" in manifest["tasks"]  # the rest go on
    loaded = load_target_taskset(Home.at(home), spec.name)
    assert loaded.tasks["CHEMBL237_Ki"].split == loaded.tasks["CHEMBL237_EC50"].split  # one target, one side
    assert {t.split for t in loaded.tasks.values()} == set(SPLITS)
    for name in counts:  # label: pActivity at or above the task's median, computed here from the raw table
        values = sorted(9 - math.log10(float(r["exp_mean [nM]"])) for r in _rows(name, SLICE))
        task = loaded.tasks[name]
        median = (values[(len(values) - 1) // 2] + values[len(values) // 2]) / 2
        assert task.threshold == pytest.approx(median)
        assert (task.labels == (task.p_activity >= task.threshold)).all() and len(task) == len(set(task.compound_keys))
        assert task.labels.sum() >= len(task) // 2
    first = (Path(home) / "tasksets" / spec.name / "compounds.parquet").read_bytes()
    build_taskset(Home.at(home), spec)
    assert (Path(home) / "tasksets" / spec.name / "compounds.parquet").read_bytes() == first  # deterministic
    fixed = build_taskset(Home.at(home), make_spec("target", seed=0, threshold=6.5))
    assert fixed["name"].endswith("-p6.5") and fixed["threshold"]["rule"] == "fixed"
    assert all(e["threshold"] == 6.5 for e in fixed["tasks"].values())


def test_the_split_keeps_a_target_together_and_in_place_as_targets_arrive():
    from medmeta.chem.moleculeace import table_names
    from medmeta.chem.target_tasks import split_by_target

    targets = {name: name.split("_")[0] for name in table_names()}
    for seed in (0, 1, 2):
        before, rule = split_by_target(targets, seed)
        assert before["CHEMBL237_Ki"] == before["CHEMBL237_EC50"] and len(set(before.values())) == 3
        after, _ = split_by_target({**targets, "CHEMBL99999_Ki": "CHEMBL99999", "CHEMBL99999_IC50": "CHEMBL99999"},
                                   seed)
        if rule["stable"]:  # no split borrowed: the tasks there were keep their split
            assert {t: after[t] for t in before} == before
        assert after["CHEMBL99999_Ki"] == after["CHEMBL99999_IC50"]


def test_settings_and_the_spec_take_target_tasks():
    from medmeta.errors import MedmetaError
    from medmeta.settings import Settings, load_settings
    from medmeta.tasksets.spec import make_spec

    assert make_spec("target").inputs == "compounds"
    for bad in (dict(inputs="records"), dict(ways=3), dict(threshold=20.0)):
        with pytest.raises(MedmetaError):
            make_spec("target", **bad)
    with pytest.raises(MedmetaError):
        make_spec("disease", threshold=6.0)
    defaults = load_settings(None).model_dump()
    Settings.model_validate({**defaults, "tasksets": [{"by": "target", "threshold": 6.5}]})


def test_a_parquet_activity_table_is_read_like_a_csv_one():
    import pyarrow as pa
    import pyarrow.parquet as pq

    from medmeta.chem.activity_rows import stage_activities
    from medmeta.records.tabular import read_table

    rows = _rows("CHEMBL237_EC50", 30)
    table = pa.table({"smiles": [r["smiles"] for r in rows] + ["CCO"],
                      "pEC50": [9 - math.log10(float(r["exp_mean [nM]"])) for r in rows] + [None],
                      "target_chembl_id": ["CHEMBL237"] * (len(rows) + 1)})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    frame, _ = read_table(sink.getvalue().to_pybytes(), "parquet")
    layout = activity_layout(frame.columns, "anything.parquet", False)
    staged = stage_activities(frame, layout, "default", "b" * 64)
    assert [(e.location, e.code) for e in staged.rejects] == [(f"row {len(rows) + 1}", "missing_activity")]
    assert set(staged.table["task"].to_pylist()) == {"CHEMBL237_EC50"}  # the type a p-scaled column names
    assert staged.table["p_activity"].to_pylist() == pytest.approx([9 + float(r["y"]) for r in rows], abs=1e-6)


def test_the_protocol_split_is_the_benchmarks_exactly(ingested):
    """``--test-tasks N``: the FS-Mol split (exactly N meta-test tasks by whole targets, no meta-validation),
    the very split medmeta.chem.protocol.split_tasks gives bench/molecules.py for the same seed."""
    from medmeta.chem.protocol import split_tasks
    from medmeta.chem.target_tasks import load_target_taskset
    from medmeta.errors import MedmetaError
    from medmeta.home import Home
    from medmeta.tasksets.build import build_taskset
    from medmeta.tasksets.spec import make_spec

    root, counts, home, _ = ingested
    for seed in (0, 1, 2):
        spec = make_spec("target", seed=seed, test_tasks=2)
        manifest = build_taskset(Home.at(home), spec)
        assert spec.name.endswith(f"seed{seed}-test2") and manifest["split_rule"]["test_tasks"] == 2
        loaded = load_target_taskset(Home.at(home), spec.name)
        expected = split_tasks(sorted(loaded.tasks), seed, n_test=2)
        assert {s: sorted(t.task for t in loaded.split(s)) for s in ("train", "test")} == \
            {s: expected[s] for s in ("train", "test")}
        assert loaded.split("val") == [] and loaded.tasks["CHEMBL237_Ki"].split == loaded.tasks["CHEMBL237_EC50"].split
    with pytest.raises(MedmetaError, match="--test-tasks 40"):
        build_taskset(Home.at(home), make_spec("target", test_tasks=40))
    with pytest.raises(MedmetaError, match="applies to target tasks"):
        make_spec("disease", test_tasks=3)
