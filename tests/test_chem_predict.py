"""``medmeta predict`` for compound-activity models (issue 15 item 5), on real MoleculeACE compounds.

A tiny real ActivityGP (a few meta-train steps on slices of three ChEMBL tables) and a RandomForest baseline card
are published into a temporary home with medmeta.registry.publish, as the card contract says; the real CLI ranks a
held-out table's compounds from a support of 16 actives + 16 inactives. The tests label the held-out compounds with
their own code (pActivity = 9 - log10(nM), active at or above the slice's median) and score the ranking with
scikit-learn's average precision.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TRAIN_TABLES = ["CHEMBL1862_Ki", "CHEMBL1871_Ki", "CHEMBL2034_Ki"]
HELD_OUT = "CHEMBL4203_Ki"
HELD_OUT_ROWS, HALF_SUPPORT = 240, 16
GP_MODEL, RF_MODEL, RECORDS_MODEL = "compounds-gp", "compounds-rf", "records-like"
RF_AT_7, RF_AT_12 = "compounds-rf-p7", "compounds-rf-p12"  # baselines whose task sets fix the threshold
UNPARSEABLE = ["C1CC(N", "this-is-no-smiles"]  # RDKit can not read either


def _card(algorithm: str, **extra) -> dict:
    return {"algorithm": algorithm, "evaluation_id": "ev-chem-predict-test", "metrics": {"delta_auprc": 0.1},
            "task_set": {"name": "moleculeace-test"}, **extra}


@pytest.fixture(scope="module")
def chem(tmp_path_factory):
    """The home with the three models, and the held-out slice: SMILES, pActivity and the test's labels."""
    pytest.importorskip("rdkit")
    pytest.importorskip("sklearn")
    import pandas as pd
    import torch

    from medmeta import registry
    from medmeta.chem.features import ecfp4_bits
    from medmeta.chem.moleculeace import copy_tables
    from medmeta.errors import MedmetaError
    from metalearn.activity import ActivityGP

    folder = tmp_path_factory.mktemp("chem-predict")
    try:
        paths = copy_tables(folder / "tables", TRAIN_TABLES + [HELD_OUT])
    except MedmetaError as e:
        pytest.skip(f"the MoleculeACE tables are not available: {e}")
    tables = {p.stem: pd.read_csv(p) for p in paths}
    tasks = []
    for name in TRAIN_TABLES:
        rows = tables[name].head(160)
        p_activity = 9 - np.log10(rows["exp_mean [nM]"].to_numpy(dtype=np.float64))
        tasks.append((torch.from_numpy(ecfp4_bits(list(rows["smiles"])).astype(np.float32)),
                      torch.from_numpy(p_activity)))
    torch.manual_seed(0)
    learner = ActivityGP(2048, episodes_per_step=2, query_size=48, support_sizes=[16], seed=0)
    learner.meta_train(tasks, steps=4)
    home = folder / "home"
    gate = registry.Gate(metric="delta_auprc")
    registry.publish(home, GP_MODEL, learner.state_dict(), _card(
        "activity_gp", task_kind="compound_activity",
        config={"learner": "activity_gp", "learner_config": learner.config(), "featuriser": "ecfp4_bits",
                "threshold": None, "support_sizes": [16]}), gate=gate)
    registry.publish(home, RF_MODEL, {}, _card(
        "rf", task_kind="compound_activity",
        baseline={"method": "rf", "features": "ecfp4_bits", "why": "RandomForest beat the meta-learners"},
        config={"featuriser": "ecfp4_bits", "threshold": None}), gate=gate)
    for name, threshold in ((RF_AT_7, 7.0), (RF_AT_12, 12.0)):
        registry.publish(home, name, {}, _card(
            "rf", task_kind="compound_activity", baseline={"method": "rf", "features": "ecfp4_bits", "why": "won"},
            config={"featuriser": "ecfp4_bits", "threshold": threshold}), gate=gate)
    registry.publish(home, RECORDS_MODEL, {"w": torch.zeros(2)}, _card(
        "protonet", config={"spec": {"inputs": "records", "n_way": 2, "kind": "disease", "algorithm": "protonet"}}), gate=gate)

    held = tables[HELD_OUT].head(HELD_OUT_ROWS)
    smiles = list(held["smiles"])
    p_activity = 9 - np.log10(held["exp_mean [nM]"].to_numpy(dtype=np.float64))
    labels = (p_activity >= np.median(p_activity)).astype(int)
    rng = np.random.default_rng(0)
    support = np.concatenate([rng.choice(np.flatnonzero(labels == 1), HALF_SUPPORT, replace=False),
                              rng.choice(np.flatnonzero(labels == 0), HALF_SUPPORT, replace=False)])
    support.sort()
    query = np.setdiff1d(np.arange(len(smiles)), support)
    files = folder / "inputs"
    files.mkdir()
    nm = held["exp_mean [nM]"].to_numpy()
    write = lambda name, header, rows: _write_csv(files / name, header, rows)  # noqa: E731
    return {
        "home": home, "files": files, "smiles": smiles, "labels": labels, "p": p_activity, "support": support,
        "query": query, "write": write,
        "support_nm": write("support.csv", ["smiles", "exp_mean [nM]"], [[smiles[i], nm[i]] for i in support]),
        "query_csv": write("library.csv", ["id", "smiles"], [[f"q{i}", smiles[i]] for i in query]),
        "small_query": write("library-60.csv", ["id", "smiles"], [[f"q{i}", smiles[i]] for i in query[:60]]),
    }


def _write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def run(chem, *args: str):
    from medmeta.cli import app

    return CliRunner().invoke(app, ["predict", "--home", str(chem["home"]), *map(str, args)])


def ok_json(chem, *args: str) -> tuple[dict, str]:
    result = run(chem, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), result.stderr


def refused(chem, *args: str) -> str:
    result = run(chem, *args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output and result.stdout == ""
    return lines[0]


def delta_auprc(chem, ranking: list[dict]) -> float:
    from sklearn.metrics import average_precision_score

    labels = np.array([chem["labels"][int(e["id"][1:])] for e in ranking])
    scores = np.array([e["score"] for e in ranking])
    return float(average_precision_score(labels, scores) - labels.mean())


def test_the_meta_learner_ranks_held_out_actives_above_chance_deterministically(chem):
    args = ("--model", GP_MODEL, "--support", chem["support_nm"], "--query", chem["query_csv"])
    first, header = ok_json(chem, *args)
    again, _ = ok_json(chem, *args)
    assert first["ranking"] == again["ranking"]
    assert first["method"] == "activity_gp" and first["baseline"] is False
    assert first["support"]["actives"] == HALF_SUPPORT and first["support"]["inactives"] == HALF_SUPPORT
    assert first["support"]["threshold_rule"] == "support median"
    assert f"{GP_MODEL}@1: activity_gp (meta-learner) on ecfp4_bits" in header
    assert f"support {HALF_SUPPORT} actives / {HALF_SUPPORT} inactives" in header
    ranked_ids = {e["id"] for e in first["ranking"]} | {e["id"] for e in first["not_scored"]}
    assert ranked_ids == {f"q{i}" for i in chem["query"]}  # every query row is ranked or listed
    assert [e["rank"] for e in first["ranking"]] == list(range(1, len(first["ranking"]) + 1))
    assert delta_auprc(chem, first["ranking"]) > 0
    plain = run(chem, *args)  # without --json: the ranking as CSV on stdout, the header on stderr
    table = list(csv.DictReader(io.StringIO(plain.stdout)))
    assert plain.exit_code == 0 and list(table[0]) == ["rank", "row", "id", "smiles", "score", "not_scored"]
    assert [r["id"] for r in table[:len(first["ranking"])]] == [e["id"] for e in first["ranking"]]


def test_the_baseline_ranks_as_medmeta_chem_baselines_does_and_says_it_is_one(chem, tmp_path):
    from medmeta.chem.baselines import random_forest
    from medmeta.chem.features import ecfp4_bits
    from medmeta.chem.standardise import standardise

    out = tmp_path / "ranked.parquet"
    result, header = ok_json(chem, "--model", RF_MODEL, "--support", chem["support_nm"], "--query",
                             chem["query_csv"], "--out", out)
    assert "rf (a baseline, not a meta-learned model) on ecfp4_bits" in header and result["baseline"] is True
    support_x = ecfp4_bits([standardise(chem["smiles"][i]).smiles for i in chem["support"]])
    support_y = chem["labels"][chem["support"]]
    query_x = ecfp4_bits([e["smiles"] for e in result["ranking"]])
    direct = random_forest(support_x, support_y, query_x, 0)
    assert np.allclose([e["score"] for e in result["ranking"]], direct, atol=1e-6)
    assert np.all(np.diff([e["score"] for e in result["ranking"]]) <= 0)
    assert delta_auprc(chem, result["ranking"]) > 0
    import pyarrow.parquet as pq

    written = pq.read_table(out).to_pylist()
    assert [r["id"] for r in written[:len(result["ranking"])]] == [e["id"] for e in result["ranking"]]
    quiet = run(chem, "--model", RF_MODEL, "--support", chem["support_nm"], "--query", chem["query_csv"],
                "--out", tmp_path / "ranked.csv")
    assert quiet.exit_code == 0 and quiet.stdout == "" and "written to" in quiet.stderr
    assert list(csv.DictReader((tmp_path / "ranked.csv").open()))[0]["id"] == result["ranking"][0]["id"]


def test_labels_p_scaled_values_and_parquet_give_the_same_support(chem):
    """A 0/1 label column, a pKi column and a Parquet file of the same compounds label them alike."""
    import pandas as pd

    support, smiles = chem["support"], chem["smiles"]
    labelled = chem["write"]("support-labels.csv", ["canonical_smiles", "active"],
                             [[smiles[i], "active" if chem["labels"][i] else "inactive"] for i in support])
    p_scaled = chem["files"] / "support-pki.parquet"
    pd.DataFrame({"smiles": [smiles[i] for i in support], "pKi": chem["p"][support]}).to_parquet(p_scaled)
    base, _ = ok_json(chem, "--model", RF_MODEL, "--support", chem["support_nm"], "--query", chem["small_query"])
    micromolar = chem["write"]("support-um.csv", ["SMILES", "Standard Value", "Standard Units"],
                               [[smiles[i], 10 ** (6 - chem["p"][i]), "uM"] for i in support])
    rules = []
    for given in (labelled, p_scaled, micromolar):
        result, _ = ok_json(chem, "--model", RF_MODEL, "--support", given, "--query", chem["small_query"])
        assert result["ranking"] == base["ranking"], given.name
        rules.append(result["support"]["threshold_rule"])
    assert rules == ["labels", "support median", "support median"]


def test_the_cards_threshold_labels_the_support(chem):
    """A task set with a fixed pActivity threshold: the support is labelled at it, not at its median."""
    fixed, header = ok_json(chem, "--model", RF_AT_7, "--support", chem["support_nm"], "--query", chem["small_query"])
    actives = int((chem["p"][chem["support"]] >= 7.0).sum())
    assert fixed["support"]["threshold_rule"] == "card" and fixed["support"]["actives"] == actives
    assert "active at pActivity >= 7, the card's threshold" in header
    line = refused(chem, "--model", RF_AT_12, "--support", chem["support_nm"], "--query", chem["small_query"])
    assert f"0 actives and {2 * HALF_SUPPORT} inactives at the card's threshold pActivity 12" in line


def test_bad_rows_are_skipped_counted_and_listed_never_quoted(chem):
    smiles, support, query = chem["smiles"], chem["support"], chem["query"]
    nm = 10 ** (9 - chem["p"])
    bad_support = chem["write"]("support-bad-rows.csv", ["smiles", "exp_mean [nM]"],
                                [[smiles[i], nm[i]] for i in support] + [[s, 5.0] for s in UNPARSEABLE])
    salt = smiles[query[0]] + ".[Na+].[Cl-]"  # the same parent as q<first> once its counter-ions are stripped
    bad_query = chem["write"]("library-bad-rows.csv", ["id", "smiles"],
                              [[f"q{i}", smiles[i]] for i in query[:40]]
                              + [["bad1", UNPARSEABLE[0]], ["dup1", salt], ["bad2", UNPARSEABLE[1]]])
    result = run(chem, "--model", GP_MODEL, "--support", bad_support, "--query", bad_query, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["support"]["skipped"] == {"unparseable_smiles": 2}
    assert out["support"]["actives"] + out["support"]["inactives"] == 2 * HALF_SUPPORT
    assert {e["id"]: e["reason"] for e in out["not_scored"]} == {
        "bad1": "unparseable_smiles", "dup1": "duplicate_compound", "bad2": "unparseable_smiles"}
    assert next(e for e in out["not_scored"] if e["id"] == "dup1")["same_as"] == 2  # q<first> is on line 2
    assert out["query"]["ranked"] == 40 and out["query"]["rows"] == 43
    assert "support rows skipped 2 (unparseable_smiles 2)" in result.stderr
    assert "2 not scored (unparseable_smiles 2), 1 repeat of a compound kept once" in result.stderr
    for text in UNPARSEABLE + [salt]:
        assert text not in result.stderr


def test_bad_input_is_one_line_and_exit_2(chem, tmp_path):
    smiles, support, labels = chem["smiles"], chem["support"], chem["labels"]
    write = chem["write"]
    query, good = chem["query_csv"], chem["support_nm"]
    cases = {
        "no such file": ("--model", GP_MODEL, "--support", tmp_path / "absent.csv", "--query", query),
        "no such file ": ("--model", GP_MODEL, "--support", good, "--query", tmp_path / "absent.csv"),
        "no SMILES column": ("--model", GP_MODEL, "--support", write("no-smiles.csv", ["structure", "exp_mean [nM]"],
                                                                     [["x", 1.0]]), "--query", query),
        "no SMILES column ": ("--model", RF_MODEL, "--support", good, "--query",
                              write("query-no-smiles.csv", ["id", "structure"], [["a", smiles[0]]])),
        "16 actives and 0 inactives": ("--model", RF_MODEL, "--support", write(
            "one-class.csv", ["smiles", "active"], [[smiles[i], 1] for i in support[labels[support] == 1]]),
            "--query", query),
        "names no unit": ("--model", GP_MODEL, "--support", write(
            "no-unit.csv", ["smiles", "value"], [[smiles[i], 10.0] for i in support]), "--query", query),
        "no usable row among 2 (unparseable_smiles 2)": ("--model", GP_MODEL, "--support", write(
            "all-bad.csv", ["smiles", "exp_mean [nM]"], [[s, 3.0] for s in UNPARSEABLE]), "--query", query),
        "give --support": ("--model", GP_MODEL, "--query", query),
        "not a compound-activity model": ("--model", RECORDS_MODEL, "--support", good, "--query", query),
        "a folder; a compound-activity model takes": ("--model", GP_MODEL, "--support", good, "--query", tmp_path),
        "--out writes a compound ranking": ("--model", RECORDS_MODEL, "--query", query, "--out", tmp_path / "o.csv"),
        "compounds of 2 targets (column target_chembl_id)": ("--model", RF_MODEL, "--support", write(
            "two-targets.csv", ["smiles", "target_chembl_id", "pki"],
            [[smiles[i], f"CHEMBL{i % 2 + 1}", 7.0] for i in support]), "--query", query),
        "no activity column": ("--model", RF_MODEL, "--support", write(
            "no-activity.csv", ["smiles", "comment"], [[smiles[i], "x"] for i in support]), "--query", query),
    }
    for expected, args in cases.items():
        line = refused(chem, *args)
        assert expected.strip() in line, (expected, line)
        assert not any(s in line for s in smiles[:5] + UNPARSEABLE)
