"""Issue 15 through the real pipeline: MoleculeACE slices dropped in a landing folder, `medmeta run`'s flow
(ingest, validation with the compounds rules, a target task set on the protocol split, the compounds
subflow: ActivityGP and ProtoNet (on ECFP4, train.backbone.compounds) meta-trained, evaluated against RF, logistic regression and Tanimoto kNN on the same
draws, the best published) on a real Prefect API; a rerun trains and publishes nothing again."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.skipif(importlib.util.find_spec("rdkit") is None
                                or importlib.util.find_spec("MoleculeACE") is None,
                                reason="the chem extra (rdkit) and the moleculeace wheel are needed")

ROOT = Path(__file__).resolve().parents[1]
TABLES = ["CHEMBL2835_Ki", "CHEMBL1862_Ki", "CHEMBL237_Ki", "CHEMBL237_EC50", "CHEMBL204_Ki", "CHEMBL214_Ki",
          "CHEMBL233_Ki"]
SLICE = 60  # rows per table: the fast suite's budget


def _settings() -> dict:
    return {"ingest": {"workers": 1},
            "validation": {"rules": str(ROOT / "validation" / "deliveries" / "compounds.yaml")},
            "tasksets": [{"by": "target", "seed": 0, "test_tasks": 2}],
            "train": {"backbone": {"compounds": {"featuriser": "ecfp4_bits", "hidden": [32]}}},
            "compounds": {"algorithms": ["activity_gp", "protonet"], "featuriser": "ecfp4_bits", "steps": 4,
                          "episodic": {"steps": 4, "meta_batch": 2, "query_size": 16}, "checkpoint_every": 2, "draws": 2,
                          "support_sizes": [16], "gate_support_size": 16, "validation_draws": 1,
                          "learner": {"support_sizes": [16], "query_size": 24, "episodes_per_step": 2}}}


@pytest.fixture(scope="module")
def ran(tmp_path_factory, prefect_api):
    import torch

    from flows.pipeline import pipeline_flow
    from medmeta.chem.moleculeace import copy_tables
    from tests.conftest import TEST_KEY

    base = tmp_path_factory.mktemp("chem-pipeline")
    landing, home, config = base / "landing", base / "home", base / "settings.yaml"
    for path in copy_tables(landing / "chembl", TABLES):
        lines = path.read_text().splitlines(keepends=True)
        path.write_text("".join(lines[:SLICE + 1]))
    config.write_text(yaml.safe_dump(_settings()))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    runs = []
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MEDMETA_PSEUDONYM_KEY", TEST_KEY)
            for _ in range(2):
                state = pipeline_flow(str(landing), str(home), str(config), return_state=True)
                assert state.is_completed(), state.message
                runs.append(state.result())
    finally:
        torch.set_num_threads(threads)
    return home, runs


def test_the_pipeline_trains_evaluates_and_publishes_the_best_method(ran):
    from medmeta import registry

    home, (first, _) = ran
    [model] = first["compound_models"]
    assert model["trained"] and model["steps"] == 4 and model["taskset"].endswith("seed0-test2")
    [at16] = model["evaluation"]
    assert at16["support"] == 16 and set(at16["methods"]) == {"activity_gp", "protonet", "rf", "logistic_regression",
                                                              "tanimoto_knn"}
    assert at16["learners"] == ["activity_gp", "protonet"] and set(at16["paired"]) == {"rf", "logistic_regression",
                                                                                       "tanimoto_knn"}
    assert set(at16["paired_by_learner"]["protonet"]) == set(at16["paired"])  # ProtoNet on the same draws
    assert model["models"]["protonet"]["trained"] and model["models"]["protonet"]["steps"] == 4
    published = model["published"]
    found = registry.resolve(home, f"{published['name']}@champion")
    assert found.ref == published["ref"] and found.card["task_kind"] == "compound_activity"
    learners = ("activity_gp", "protonet")
    best = max(at16["methods"], key=lambda m: (at16["methods"][m]["dauprc"], m not in learners))
    assert published["published"] == best  # the winner at the gate's support size, a baseline included
    assert ("baseline" in found.card) == (best not in learners)
    markdown = found.card_md_path.read_text()
    assert "Compared with the baselines" in markdown
    record = json.loads(sorted((home / "runs").glob("pipeline-*.json"))[0].read_text())
    assert record["registry"][published["name"]]["champion"] == found.version


def test_the_run_summary_and_its_lines_show_the_compound_models(ran):
    from medmeta.training.report import log_lines, pipeline_markdown

    home, (first, _) = ran
    markdown = pipeline_markdown(first)
    assert "## Compound activity models against the baselines" in markdown and first["compound_models"][0]["published"]["ref"] in markdown
    assert any(line.startswith("compounds on target-compounds") and "dAUPRC activity_gp" in line
               and "protonet" in line for line in log_lines(first))


def test_a_rerun_trains_and_publishes_nothing_again(ran):
    home, (first, second) = ran
    [again] = second["compound_models"]
    assert not again["trained"] and again["published"]["cached"]
    assert again["published"]["ref"] == first["compound_models"][0]["published"]["ref"]


def test_an_arrival_of_activity_tables_retrains_and_gates_the_compound_model(ran, tmp_path):
    """The on-new-cases path (flows/arrival.py) on a compounds home: the new table is ingested, the target
    task set rebuilt, and the compounds flow trains on it and publishes through the gate (no classes to adapt)."""
    import torch

    from flows.arrival import arrival_flow
    from medmeta import registry
    from medmeta.chem.moleculeace import copy_tables
    from tests.conftest import TEST_KEY

    home, (first, _) = ran
    landing = tmp_path / "landing"
    for path in copy_tables(landing / "chembl", TABLES + ["CHEMBL234_Ki"]):
        lines = path.read_text().splitlines(keepends=True)
        path.write_text("".join(lines[:SLICE + 1]))
    config = tmp_path / "settings.yaml"
    config.write_text(yaml.safe_dump(_settings()))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MEDMETA_PSEUDONYM_KEY", TEST_KEY)
            state = arrival_flow(str(landing), str(home), str(config), return_state=True)
    finally:
        torch.set_num_threads(threads)
    assert state.is_completed(), state.message
    summary = state.result()
    [model] = summary["compound_models"]
    assert model["trained"] and model["model"] != first["compound_models"][0]["model"]  # the task set grew
    name = model["published"]["name"]
    assert registry.versions(home, name) == [1, 2] and registry.read_aliases(home, name)["champion"] in (1, 2)
    assert summary["adapted"] == [] and summary["warm_starts"] == []
