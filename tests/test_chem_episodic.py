"""metalearn's episodic meta-learners on compounds (issue 15: featurisers as a backbone input kind): ProtoNet and
first-order MAML meta-trained on fingerprints through medmeta.chem.episodic (found not retrained, a killed run
resumed to the same weights), RDKit descriptors standardised with the meta-train rows' statistics and the scaling
saved with the model, the honest gate choosing among ActivityGP, ProtoNet and the baselines on generated problems
whose answer is known, ``medmeta predict`` with a published ProtoNet, and the settings' one-line errors.

Real data: slices of the MoleculeACE ChEMBL tables (test_chem_training.py's fixture and task-set writer), real
RDKit, real torch training on small data. Expected statistics and labels come from this file's own code."""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import tests.test_chem_training as chem_training
from tests.test_chem_training import TABLES, _generated, _heavy_atoms, _one_unclustered_ecfp4_bit, median_labels, write_taskset

compounds = chem_training.compounds  # the fixture: task -> (canonical SMILES, pActivity) of the MoleculeACE slices

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.skipif(importlib.util.find_spec("rdkit") is None
                                or importlib.util.find_spec("MoleculeACE") is None,
                                reason="the chem extra (rdkit) and the moleculeace wheel are needed")]


def settings(algorithms=("protonet",), featuriser="ecfp4_bits", hidden=(64, 32), steps=6, **compounds):
    from medmeta.settings import Settings

    base = {"algorithms": list(algorithms), "featuriser": "maccs_keys", "steps": 6, "checkpoint_every": 3,
            "support_sizes": [16], "draws": 2, "validation_draws": 1, "gate_support_size": 16,
            "baselines": ["rf", "tanimoto_knn"], "device": "cpu", "learner": {"episodes_per_step": 4, "query_size": 48},
            "episodic": {"steps": steps, "meta_batch": 4, "lr": 0.001, "query_size": 24}}
    return Settings.model_validate({"compounds": {**base, **compounds},
                                    "train": {"backbone": {"compounds": {"featuriser": featuriser,
                                                                         "hidden": list(hidden)}}}})


SNAPSHOT_FEATURES = Path("features") / "snapshot-for-tests"  # write_taskset's snapshot: its feature cache


@pytest.fixture(scope="module")
def feature_cache(compounds, tmp_path_factory) -> Path:
    """Every compound's descriptors, MACCS keys and ECFP4 bits, computed once for the module's homes (RDKit's
    descriptors take seconds); each home gets a copy as its snapshot's feature cache."""
    from medmeta.chem.features import FeatureCache

    folder = tmp_path_factory.mktemp("chem-features")
    smiles = sorted({s for task_smiles, _ in compounds.values() for s in task_smiles})
    cache = FeatureCache(folder)
    for featuriser in ("descriptors", "maccs_keys", "ecfp4_bits"):
        cache.get(featuriser, smiles)
    return folder


def new_home(root: Path, name: str, tasks: dict, feature_cache: Path) -> Path:
    home = root / "h"
    write_taskset(home, name, tasks, TABLES)
    shutil.copytree(feature_cache, home / SNAPSHOT_FEATURES)
    return home


@pytest.fixture(scope="module")
def real_home(compounds, feature_cache, tmp_path_factory) -> Path:
    return new_home(tmp_path_factory.mktemp("chemepisodic"), "actives",
                    {t: (s, p, median_labels(p)) for t, (s, p) in compounds.items()}, feature_cache)


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "weights.safetensors"))


# -- training -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["protonet", "fomaml"])
def test_an_episodic_learner_meta_trains_on_fingerprints_is_found_and_resumes_to_the_same_weights(
        real_home, tmp_path, algorithm):
    import torch

    from medmeta.chem.episodic import build_episodic, episodic_identity
    from medmeta.chem.target_tasks import load_target_taskset
    from medmeta.chem.training import compound_model_name
    from medmeta.chem.episodic import train_episodic_model
    from medmeta.home import Home

    config = settings(algorithms=[algorithm])
    first = train_episodic_model(Home.at(real_home), "actives", algorithm, config)
    assert not first.cached and first.steps == 6 and first.device == "cpu"
    assert first.model.startswith(f"actives-{algorithm}-") and first.folder == real_home / "training" / first.model
    spec = json.loads((first.folder / "spec.json").read_text())["spec"]
    assert spec["backbone"] == {"name": "mlp", "config": {"in_features": 2048, "hidden": [64, 32]}} and spec["n_way"] == 2
    result = json.loads((first.folder / "result.json").read_text())
    assert len(result["history"]) == 6 and result["scaling"]["kind"] == "none"
    assert result["train_tasks"] == sorted(t for t, s in TABLES.items() if s == "train")
    assert result["validation"]["tasks"] == ["CHEMBL214_Ki"]  # the val task, before and after, the same draws
    trained = _weights(first.folder)
    assert not any(k.startswith("input_scaling.") for k in trained)  # bits enter as they are
    torch.manual_seed(0)
    start = build_episodic(spec).state_dict()
    assert trained.keys() == start.keys() and any(not torch.equal(trained[k], start[k]) for k in start)  # it learned

    again = train_episodic_model(Home.at(real_home), "actives", algorithm, config)
    assert again.cached and again.model == first.model
    manifest = load_target_taskset(Home.at(real_home), "actives").manifest
    for other in (settings(algorithms=[algorithm], hidden=(32,)), settings(algorithms=[algorithm], steps=4),
                  settings(algorithms=[algorithm], featuriser="ecfp4_counts")):
        assert compound_model_name(episodic_identity(manifest, algorithm, other)) != first.model

    killed = tmp_path / "h"
    shutil.copytree(real_home / "tasksets", killed / "tasksets")
    shutil.copytree(real_home / "features", killed / "features")

    def kill_at_three(step):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_episodic_model(Home.at(killed), "actives", algorithm, config, on_checkpoint=kill_at_three)
    assert not (killed / "training" / first.model / "result.json").exists()
    resumed = train_episodic_model(Home.at(killed), "actives", algorithm, config)
    assert not resumed.cached and resumed.model == first.model
    assert json.loads((resumed.folder / "result.json").read_text())["resumed_at"] == 3
    again_weights = _weights(resumed.folder)
    assert again_weights.keys() == trained.keys() and all(torch.equal(trained[k], again_weights[k]) for k in trained)


def test_the_benchmark_method_trains_the_model_the_pipeline_trains(real_home):
    """``learner_method`` (bench/molecules.py's way in, no home) meta-trains on a split's training tasks exactly the
    network ``train_episodic_model`` trains on the same tasks and seed: the same scores on a draw."""
    from medmeta.chem.episodic import conditioned, episodic_identity, learner_method, load_episodic, train_episodic_model
    from medmeta.chem.evaluation import TrainTask
    from medmeta.chem.target_tasks import load_target_taskset
    from medmeta.chem.training import task_features
    from medmeta.home import Home

    config = settings(algorithms=["protonet"])
    folder = train_episodic_model(Home.at(real_home), "actives", "protonet", config).folder  # found: trained above
    tasks = load_target_taskset(Home.at(real_home), "actives")
    x = task_features(Home.at(real_home), tasks, "ecfp4_bits")
    train = [TrainTask(t.task, x[t.task], t.labels) for t in tasks.split("train")]
    scorer = learner_method(episodic_identity(tasks.manifest, "protonet", config), "bench").prepare(train, 0)
    test = tasks.tasks["CHEMBL233_Ki"]
    support = np.concatenate([np.flatnonzero(test.labels == 1)[:8], np.flatnonzero(test.labels == 0)[:8]])
    query = np.setdiff1d(np.arange(len(test.labels)), support)
    xt = x["CHEMBL233_Ki"]
    learner, scaling = load_episodic(folder)
    expected = conditioned(learner, scaling, xt[support], test.labels[support])(xt[query])
    assert np.array_equal(scorer(xt[support], test.labels[support], xt[query], 0), expected)


def test_descriptors_are_standardised_with_the_meta_train_rows_and_the_scaling_travels_with_the_model(
        real_home, compounds):
    import torch
    from rdkit import Chem
    from rdkit.Chem import Descriptors

    from medmeta.chem.episodic import CLIP, conditioned, load_episodic, train_episodic_model
    from medmeta.chem.features import DESCRIPTOR_NAMES
    from medmeta.home import Home

    trained = train_episodic_model(Home.at(real_home), "actives", "protonet",
                                   settings(featuriser="descriptors", hidden=(32, 16)))
    rows = []  # the meta-train tasks' descriptor rows, computed here with RDKit
    for task, split in sorted(TABLES.items()):
        if split == "train":
            for s in compounds[task][0]:
                mol = Chem.MolFromSmiles(s)
                rows.append([getattr(Descriptors, name)(mol) for name in DESCRIPTOR_NAMES])
    values = np.array(rows, dtype=np.float64)
    values = np.where(np.isfinite(values.astype(np.float32)), values.astype(np.float32), 0.0).astype(np.float64)
    mean, std = values.mean(0), values.std(0)
    std[std < 1e-12] = 1.0
    saved = _weights(trained.folder)
    np.testing.assert_allclose(saved["input_scaling.mean"].numpy(), mean, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(saved["input_scaling.std"].numpy(), std, rtol=1e-4, atol=1e-4)
    assert json.loads((trained.folder / "result.json").read_text())["scaling"]["kind"] == "standardised"

    learner, scaling = load_episodic(trained.folder)
    assert np.array_equal(scaling.mean, saved["input_scaling.mean"].numpy())
    bad = values[:2].astype(np.float32).copy()
    bad[0, 0], bad[0, 1], bad[1, 2] = np.nan, np.inf, 1e30
    scaled, replaced = scaling.apply(bad)
    assert replaced == 2 and scaled[0, 0] == 0.0 and scaled[0, 1] == 0.0 and scaled[1, 2] == CLIP
    assert np.isfinite(scaled).all() and np.abs(scaled).max() <= CLIP

    test_smiles, test_p = compounds["CHEMBL233_Ki"]
    x = np.array([[getattr(Descriptors, n)(Chem.MolFromSmiles(s)) for n in DESCRIPTOR_NAMES] for s in test_smiles],
                 dtype=np.float32)
    y = median_labels(test_p)
    support = np.concatenate([np.flatnonzero(y == 1)[:8], np.flatnonzero(y == 0)[:8]])
    query = np.setdiff1d(np.arange(len(y)), support)
    got = conditioned(learner, scaling, x[support], y[support])(x[query])
    z = lambda a: torch.from_numpy(np.clip((a - mean) / std, -CLIP, CLIP).astype(np.float32))  # noqa: E731
    logits = learner.adapt(z(x[support]), torch.from_numpy(y[support]))(z(x[query]))
    np.testing.assert_allclose(got, torch.softmax(logits, -1)[:, 1].double().numpy(), rtol=1e-4, atol=1e-5)


# -- the gate among meta-learners and baselines, and predict ----------------------------------------------

# (rule, the method that must win): ProtoNet sees the standardised descriptors (molecular size among them),
# ActivityGP MACCS keys, the baselines ECFP4
PROBLEMS = [(_heavy_atoms, "protonet"), (_one_unclustered_ecfp4_bit, "rf")]


@pytest.mark.parametrize("rule, winner", PROBLEMS, ids=["protonet-wins", "rf-wins"])
def test_the_gate_publishes_the_best_of_activity_gp_protonet_and_the_baselines(compounds, feature_cache, tmp_path,
                                                                              rule, winner):
    from medmeta import registry
    from medmeta.chem.episodic import train_episodic_model
    from medmeta.chem.publish import publish_compound_models
    from medmeta.chem.training import train_activity_model
    from medmeta.home import Home

    home = new_home(tmp_path, "generated", _generated(compounds, rule), feature_cache)
    config = settings(algorithms=["activity_gp", "protonet"], featuriser="descriptors", hidden=(32, 16), steps=30,
                      validation_draws=0)
    gp = train_activity_model(Home.at(home), "generated", config).model
    proto = train_episodic_model(Home.at(home), "generated", "protonet", config).model
    published = publish_compound_models(Home.at(home), [gp, proto], config)
    assert published["published"] == winner and published["decision"] == "champion"
    card = registry.resolve(home, "generated@champion").card
    assert card["evaluation"]["models"] == {"activity_gp": gp, "protonet": proto}
    assert set(card["deltas"]) == {"activity_gp", "protonet", "rf", "tanimoto_knn"} - {winner}
    assert all(d["dauprc_S16"]["mean"] > 0 for d in card["deltas"].values())  # the winner above every other method
    evaluation = json.loads((home / "training" / gp / "evaluation.json").read_text())
    assert evaluation["result"]["methods"] == ["activity_gp", "protonet", "rf", "tanimoto_knn"]  # one protocol run
    if winner == "protonet":
        assert "baseline" not in card and card["config"]["learner"] == "protonet"
        assert card["config"]["featuriser"] == "descriptors" and card["training"]["model"] == proto
        assert {"input_scaling.mean", "input_scaling.std"} <= set(registry.resolve(home, "generated@champion").load_weights())
        _predict_with_the_published_protonet(home, compounds, proto, tmp_path)
    else:
        assert card["baseline"]["method"] == "rf" and card["weights"]["parameters"] == 0
        assert "RandomForest" in card["baseline"]["why"]
    again = publish_compound_models(Home.at(home), [gp, proto], config)
    assert again["cached"] and again["version"] == published["version"]


def _predict_with_the_published_protonet(home: Path, compounds, proto: str, tmp_path: Path) -> None:
    """``medmeta predict`` ranks a test target's compounds with the published ProtoNet: the scores are the trained
    model's (its folder's weights and scaling), and the heavy-atom rule is found (average precision above the
    fraction of actives, computed here)."""
    from rdkit import Chem
    from sklearn.metrics import average_precision_score
    from typer.testing import CliRunner

    from medmeta.chem.episodic import conditioned, load_episodic
    from medmeta.chem.features import descriptors
    from medmeta.cli import app

    smiles = compounds["CHEMBL236_Ki"][0]
    size = np.array([Chem.MolFromSmiles(s).GetNumHeavyAtoms() for s in smiles], float) + 1e-6 * np.arange(len(smiles))
    labels = median_labels(size)
    support = np.concatenate([np.flatnonzero(labels == 1)[:8], np.flatnonzero(labels == 0)[:8]])
    query = np.setdiff1d(np.arange(len(smiles)), support)
    with (tmp_path / "support.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([["smiles", "label"], *[[smiles[i], int(labels[i])] for i in support]])
    with (tmp_path / "library.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([["id", "smiles"], *[[f"q{i}", smiles[i]] for i in query]])
    out = CliRunner().invoke(app, ["predict", "--home", str(home), "--model", "generated@champion", "--support",
                                   str(tmp_path / "support.csv"), "--query", str(tmp_path / "library.csv"), "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    assert result["method"] == "protonet" and not result["baseline"] and result["featuriser"] == "descriptors"
    assert "protonet (meta-learner) on descriptors" in out.stderr
    ranked = {int(e["id"][1:]): e["score"] for e in result["ranking"]}
    assert sorted(ranked) == list(query)
    learner, scaling = load_episodic(home / "training" / proto)
    expected = conditioned(learner, scaling, descriptors([smiles[i] for i in support]), labels[support])(
        descriptors([smiles[i] for i in query]))
    np.testing.assert_allclose([ranked[i] for i in query], expected, atol=2e-6)  # predict rounds to 6 places
    assert average_precision_score(labels[query], expected) > labels[query].mean() + 0.1


# -- settings -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("yaml_text, key", [
    ("train:\n  backbone:\n    compounds: {featuriser: ecfp4_bits, hidden: [512, 0]}\n", "train.backbone.compounds.hidden"),
    ("train:\n  backbone:\n    compounds: {featuriser: morgan, hidden: [64]}\n", "train.backbone.compounds.featuriser"),
    ("compounds:\n  algorithms: [activity_gp, svm]\n", "compounds.algorithms[1]"),
    ("compounds:\n  featuriser: morgan\n", "compounds.featuriser"),
    ("compounds:\n  episodic: {steps: 0}\n", "compounds.episodic.steps"),
], ids=["hidden-not-positive", "unknown-backbone-featuriser", "unknown-algorithm", "unknown-featuriser", "steps-0"])
def test_a_bad_compounds_setting_is_one_line_naming_the_file_and_the_key(tmp_path, yaml_text, key):
    from medmeta.errors import MedmetaError
    from medmeta.settings import load_settings

    path = tmp_path / "settings.yaml"
    path.write_text(yaml_text)
    with pytest.raises(MedmetaError) as error:
        load_settings(path)
    message = str(error.value)
    assert message.startswith(f"{path}: {key} ") and "\n" not in message, message
    assert load_settings().compounds["algorithms"] == ["activity_gp"]  # the default pipeline's time is unchanged
