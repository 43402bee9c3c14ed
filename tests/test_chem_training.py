"""Compound-activity models (issue 15): the fingerprint featurisers, the shared protocol loop, meta-training of
ActivityGP on a target task set (found not retrained, resumed to the same weights), the evaluation against the
baselines on the same draws, and the honest gate (the baseline itself is published where it wins).

Real data: slices of the MoleculeACE ChEMBL tables (copied from the installed wheel at run time), real RDKit,
real scikit-learn. The task sets are written directly in the layout ``tasks build --by target`` writes (the
ingest path has its own tests in test_chem_ingest.py), which keeps this file inside its time budget. Expected
numbers come from this file's own code (csv, RDKit, numpy), never from medmeta's."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.skipif(importlib.util.find_spec("rdkit") is None
                                or importlib.util.find_spec("MoleculeACE") is None,
                                reason="the chem extra (rdkit) and the moleculeace wheel are needed")]

# one table per target: train 4, val 1, test 3
TABLES = {"CHEMBL2835_Ki": "train", "CHEMBL1862_Ki": "train", "CHEMBL237_Ki": "train", "CHEMBL204_Ki": "train",
          "CHEMBL214_Ki": "val", "CHEMBL233_Ki": "test", "CHEMBL234_Ki": "test", "CHEMBL236_Ki": "test"}
SLICE = 70  # compounds per table


@pytest.fixture(scope="module")
def compounds(tmp_path_factory) -> dict[str, tuple[list[str], np.ndarray]]:
    """Task -> (canonical SMILES, pActivity) of the first SLICE distinct compounds of each table, read here."""
    from rdkit import Chem, RDLogger

    from medmeta.chem.moleculeace import copy_tables

    RDLogger.DisableLog("rdApp.*")
    folder = tmp_path_factory.mktemp("moleculeace")
    out = {}
    for path in copy_tables(folder, list(TABLES)):
        seen: dict[str, float] = {}
        with open(path, newline="") as fh:
            for row in csv.DictReader(fh):
                smiles = Chem.MolToSmiles(Chem.MolFromSmiles(row["smiles"]))
                seen.setdefault(smiles, float(row["y"]) + 9.0)
                if len(seen) == SLICE:
                    break
        out[path.stem] = (list(seen), np.array(list(seen.values())))
    return out


def write_taskset(home: Path, name: str, tasks: dict[str, tuple[list[str], np.ndarray, np.ndarray]],
                  splits: dict[str, str], seed: int = 0) -> None:
    """A target task set in ``tasks build --by target``'s layout: task -> (SMILES, pActivity, labels)."""
    import pandas as pd

    from medmeta.chem.target_tasks import KIND, TABLE
    from medmeta.tasksets.store import FORMAT, MANIFEST

    folder = home / "tasksets" / name
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"task": task, "target": task.split("_")[0], "compound_key": hashlib.sha256(s.encode()).hexdigest()[:27],
             "smiles": s, "p_activity": float(p), "label": int(y), "split": splits[task]}
            for task, (smiles, ps, ys) in sorted(tasks.items()) for s, p, y in zip(smiles, ps, ys)]
    frame = pd.DataFrame(rows).sort_values(["task", "compound_key"], kind="mergesort")
    frame.to_parquet(folder / TABLE, index=False)
    about = {task: {"target": task.split("_")[0], "split": splits[task], "threshold": float(np.median(ps)),
                    "cases": len(s), "actives": int(ys.sum()), "inactives": int(len(ys) - ys.sum())}
             for task, (s, ps, ys) in tasks.items()}
    manifest = {"format": FORMAT, "name": name, "snapshot": "snapshot-for-tests", "kind": KIND, "seed": seed,
                "threshold": {"rule": "median", "value": None}, "tasks": dict(sorted(about.items())), "refused": [],
                "excluded": [], "table": {"file": TABLE, "sha256": hashlib.sha256((folder / TABLE).read_bytes()).hexdigest(),
                                          "rows": len(frame)}}
    (folder / MANIFEST).write_text(json.dumps(manifest))


def median_labels(p: np.ndarray) -> np.ndarray:
    return (p >= np.median(p)).astype(np.int64)


def settings(**compounds):
    from medmeta.settings import Settings

    base = {"featuriser": "fingerprints", "steps": 8, "checkpoint_every": 4, "support_sizes": [16], "draws": 3,
            "validation_draws": 2, "gate_support_size": 16, "baselines": ["rf", "tanimoto_knn"], "device": "cpu",
            "learner": {"episodes_per_step": 4, "query_size": 64}}  # small episodes: the fast suite's budget
    return Settings.model_validate({"compounds": {**base, **compounds}})


@pytest.fixture(scope="module")
def real_home(compounds, tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("chemtrain") / "h"
    write_taskset(home, "actives", {t: (s, p, median_labels(p)) for t, (s, p) in compounds.items()}, TABLES)
    return home


# -- features --------------------------------------------------------------------------------------------


def test_fingerprints_are_the_five_blocks_side_by_side_and_cached_once(compounds, tmp_path):
    from rdkit import Chem, DataStructs
    from rdkit.Chem import MACCSkeys, rdFingerprintGenerator as fp

    from medmeta.chem.features import FEATURISER_BLOCKS, FEATURISERS, FeatureCache, fingerprints

    smiles = compounds["CHEMBL214_Ki"][0][:20]
    got = fingerprints(smiles)
    assert got.shape == (20, sum(FEATURISER_BLOCKS["fingerprints"])) == (20, 4 * 2048 + 167) and got.dtype == np.uint8
    gens = [fp.GetMorganGenerator(radius=2, fpSize=2048), fp.GetAtomPairGenerator(fpSize=2048),
            fp.GetTopologicalTorsionGenerator(fpSize=2048),
            fp.GetMorganGenerator(radius=2, fpSize=2048, atomInvariantsGenerator=fp.GetMorganFeatureAtomInvGen())]
    for i, s in enumerate(smiles):  # computed here, block by block
        mol = Chem.MolFromSmiles(s)
        maccs = np.zeros(167)
        DataStructs.ConvertToNumpyArray(MACCSkeys.GenMACCSKeys(mol), maccs)
        assert (got[i] == np.concatenate([g.GetFingerprintAsNumPy(mol) for g in gens] + [maccs])).all()
    start = 0
    for name, width in zip(("ecfp4_bits", "atom_pair_bits", "torsion_bits", "fcfp4_bits", "maccs_keys"),
                           FEATURISER_BLOCKS["fingerprints"]):
        assert (FEATURISERS[name](smiles) == got[:, start:start + width]).all()
        start += width
    cache = FeatureCache(tmp_path)
    assert (cache.get("fingerprints", smiles[::-1]) == got[::-1]).all()
    again = FeatureCache(tmp_path)
    assert (again.get("fingerprints", smiles) == got).all() and again.computed == {}  # read back, bit-packed
    assert (tmp_path / "fingerprints.npz").stat().st_size < got.size / 4


def test_the_training_modules_import_neither_rdkit_nor_sklearn_nor_torch():
    import subprocess
    import sys

    code = ("import sys, medmeta.chem.evaluation, medmeta.chem.training, medmeta.chem.publish, medmeta.chem.episodic; "
            "print(sorted(m for m in ('rdkit', 'sklearn', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- the protocol loop ------------------------------------------------------------------------------------


def test_every_method_sees_the_same_draws(compounds):
    from medmeta.chem.evaluation import Method, Split, run_protocol
    from medmeta.chem.protocol import draw, draw_rng

    labels = {t: median_labels(p) for t, (_, p) in compounds.items()}
    x = {t: np.arange(len(y), dtype=np.float64)[:, None] for t, y in labels.items()}  # a compound's row = its index
    seen: dict[str, list] = {"a": [], "b": []}

    def recording(name):
        def scorer(sx, sy, qx, k):
            seen[name].append((tuple(sx[:, 0]), tuple(qx[:, 0]), k))
            return np.random.default_rng(len(seen[name])).random(len(qx))
        return Method("rows", lambda train, seed: scorer, name)

    test = ("CHEMBL233_Ki", "CHEMBL234_Ki")
    result = run_protocol(labels, {"rows": x}, [Split(7, (), test), Split(8, (), test)],
                          {"a": recording("a"), "b": recording("b")}, [16, 32], 2)
    assert seen["a"] == seen["b"] and len(seen["a"]) == 2 * 2 * 2 * 2
    expected = [(tuple(s.astype(float)), tuple(q.astype(float)), k) for seed in (7, 8) for size in (16, 32)
                for t in test for k in range(2) for s, q in [draw(labels[t], size, draw_rng(seed, t, size, k))]]
    assert seen["a"] == expected
    assert result.units == [(t, s) for s in (7, 8) for t in test]
    assert len(result.values[("a", 16)]) == 4 and result.difference("a", "a", 16).mean == 0
    one = run_protocol(labels, {"rows": x}, [Split(7, (), test)], {"a": recording("a"), "b": recording("b")}, [16, 32], 2)
    two = run_protocol(labels, {"rows": x}, [Split(8, (), test)], {"a": recording("a"), "b": recording("b")}, [16, 32], 2)
    joined = type(result).combine([one, two])  # the splits evaluated apart, joined: the same units and draws
    assert joined.units == result.units and joined.sizes == result.sizes
    assert type(result).from_dict(json.loads(json.dumps(joined.to_dict()))).units == result.units


# -- training -------------------------------------------------------------------------------------------


def test_training_is_found_not_repeated_and_a_killed_run_resumes_to_the_same_weights(real_home, tmp_path):
    from safetensors.torch import load_file

    from medmeta.chem.training import train_activity_model
    from medmeta.home import Home

    config = settings()
    first = train_activity_model(Home.at(real_home), "actives", config)
    assert not first.cached and first.steps == 8 and first.device == "cpu"
    assert first.folder == real_home / "training" / first.model and first.model.startswith("actives-activity_gp-")
    stored = np.load(real_home / "features" / "snapshot-for-tests" / "fingerprints.npz")
    import pandas as pd

    table = pd.read_parquet(real_home / "tasksets" / "actives" / "compounds.parquet")
    assert len(stored["keys_utf8"].tobytes().decode().split("\n")) == table["smiles"].nunique()  # each once
    again = train_activity_model(Home.at(real_home), "actives", config)
    assert again.cached and again.model == first.model and again.steps == 8
    result = json.loads((first.folder / "result.json").read_text())
    assert result["validation"]["tasks"] == ["CHEMBL214_Ki"] and "meta_trained" in result["validation"]
    from medmeta.chem.target_tasks import load_target_taskset
    from medmeta.chem.training import activity_identity, activity_model_name

    manifest = load_target_taskset(Home.at(real_home), "actives").manifest
    assert activity_model_name(activity_identity(manifest, config.compounds)) == first.model
    for other in (settings(steps=4), settings(featuriser="ecfp4_bits"), settings(learner={"lr": 0.01})):
        assert activity_model_name(activity_identity(manifest, other.compounds)) != first.model  # another model

    killed = tmp_path / "h"
    shutil.copytree(real_home / "tasksets", killed / "tasksets")
    shutil.copytree(real_home / "features", killed / "features")

    def kill_after_four(step):
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_activity_model(Home.at(killed), "actives", config, on_checkpoint=kill_after_four)
    assert not (killed / "training" / first.model / "result.json").exists()
    resumed = train_activity_model(Home.at(killed), "actives", config)
    assert not resumed.cached and resumed.model == first.model
    assert json.loads((resumed.folder / "result.json").read_text())["resumed_at"] == 4
    a, b = load_file(str(first.folder / "weights.safetensors")), load_file(str(resumed.folder / "weights.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


# -- evaluation and the honest gate -------------------------------------------------------------------------


def test_the_evaluation_scores_every_method_on_the_test_tasks_and_is_reused(real_home):
    from medmeta.chem.publish import evaluate_activity_model
    from medmeta.chem.training import train_activity_model
    from medmeta.home import Home

    model = train_activity_model(Home.at(real_home), "actives", settings()).model  # found: trained above
    config = settings(baselines=["logistic_regression", "tanimoto_knn"])  # not the model's settings: the same model
    evaluation = evaluate_activity_model(Home.at(real_home), model, config)
    result = evaluation.result
    assert result.methods == ["activity_gp", "logistic_regression", "tanimoto_knn"]
    assert result.units == [(t, 0) for t in ("CHEMBL233_Ki", "CHEMBL234_Ki", "CHEMBL236_Ki")]
    saved = real_home / "training" / model / "evaluation.json"
    before = saved.stat().st_mtime_ns
    again = evaluate_activity_model(Home.at(real_home), model, config)
    assert saved.stat().st_mtime_ns == before and again.to_dict() == evaluation.to_dict()
    assert json.loads(saved.read_text())["result"]["values"]["tanimoto_knn"]["16"] == result.values[("tanimoto_knn", 16)]


def _generated(compounds, rule) -> dict[str, tuple[list[str], np.ndarray, np.ndarray]]:
    """The real compounds with labels from ``rule(task, smiles) -> scores`` (active: at or above the median)."""
    out = {}
    for task, (smiles, _) in compounds.items():
        score = rule(task, smiles)
        binary = set(np.unique(score)) == {0.0, 1.0}  # a rule that gives the label itself
        out[task] = (smiles, score, score.astype(np.int64) if binary else median_labels(score))
    return out


def _heavy_atoms(task, smiles):
    """Generated activity: the number of heavy atoms (ties broken by order). Atom pairs encode how far apart
    atoms are, so molecules of one size are alike under the meta-learner's atom-pair kernel; the baselines see
    ECFP4 only (radius-2 environments, about the same in small and large molecules)."""
    from rdkit import Chem

    return np.array([Chem.MolFromSmiles(s).GetNumHeavyAtoms() for s in smiles], float) + 1e-6 * np.arange(len(smiles))


def _one_unclustered_ecfp4_bit(task, smiles):
    """Generated activity: whether a compound carries one ECFP4 bit (held by 30-70% of the task's compounds), the
    bit on which nearest neighbours (Tanimoto, ECFP4) agree least: a single-feature rule a random forest finds
    from a few examples, invisible to the meta-learner's MACCS keys and to similarity."""
    from rdkit import Chem
    from rdkit.Chem import rdFingerprintGenerator as fp

    gen = fp.GetMorganGenerator(radius=2, fpSize=2048)
    bits = np.array([gen.GetFingerprintAsNumPy(Chem.MolFromSmiles(s)) for s in smiles]).astype(float)
    inter, counts = bits @ bits.T, bits.sum(1)
    similarity = inter / (counts[:, None] + counts[None, :] - inter)
    np.fill_diagonal(similarity, -1)
    nearest = similarity.argmax(1)
    candidates = np.flatnonzero((bits.mean(0) > 0.3) & (bits.mean(0) < 0.7))
    agreement = [(bits[:, b] == bits[nearest, b]).mean() for b in candidates]
    return bits[:, candidates[int(np.argmin(agreement))]]


# (rule, the meta-learner's featuriser, baselines, the method that must win)
PROBLEMS = [(_heavy_atoms, "atom_pair_bits", ["rf", "logistic_regression", "tanimoto_knn"], "activity_gp"),
            (_one_unclustered_ecfp4_bit, "maccs_keys", ["rf", "tanimoto_knn"], "rf")]


@pytest.mark.parametrize("rule, featuriser, baselines, winner", PROBLEMS, ids=["meta-learner-wins", "rf-wins"])
def test_the_gate_publishes_the_best_method_and_says_so(compounds, tmp_path, rule, featuriser, baselines, winner):
    from medmeta import registry
    from medmeta.chem.publish import publish_activity_model
    from medmeta.chem.training import train_activity_model
    from medmeta.home import Home

    home = tmp_path / "h"
    write_taskset(home, "generated", _generated(compounds, rule), TABLES)
    config = settings(steps=10, featuriser=featuriser, baselines=baselines, validation_draws=0, draws=2)
    model = train_activity_model(Home.at(home), "generated", config).model
    published = publish_activity_model(Home.at(home), model, config)
    assert published["published"] == winner and published["decision"] == "champion"
    version = registry.resolve(home, "generated@champion")
    card, markdown = version.card, version.card_markdown()
    assert card["task_kind"] == "compound_activity" and card["metrics"]["dauprc"]["n"] == 3
    assert set(card["deltas"]) == {"activity_gp", *baselines} - {winner}
    assert all(d["dauprc_S16"]["mean"] > 0 for d in card["deltas"].values())  # the winner minus each other method
    assert "Compared with the baselines" in markdown
    if winner == "activity_gp":
        assert "baseline" not in card and card["config"]["learner"] == "activity_gp"
        assert card["config"]["featuriser"] == featuriser and card["config"]["support_sizes"] == [16]
        from metalearn.activity import ActivityGP

        learner = ActivityGP(**card["config"]["learner_config"])
        learner.load_state_dict(version.load_weights())  # the contract: ActivityGP(**learner_config) + weights
        assert int(learner.step) == 10 and card["weights"]["parameters"] > 0
    else:
        assert card["baseline"]["method"] == "rf" and card["baseline"]["features"] == "ecfp4_bits"
        assert card["weights"]["parameters"] == 0 and "RandomForest" in card["baseline"]["why"]
        assert "A baseline, not a meta-learned model" in markdown and card["baseline"]["why"] in markdown
    again = publish_activity_model(Home.at(home), model, config)
    assert again["cached"] and again["version"] == published["version"]  # not published twice
