"""Training, evaluation and publishing as Prefect flows on a real cohort (records: a small MLP).

A crashed training resumes from its checkpoint and ends with the weights of an uninterrupted
run; evaluations score the model and both baselines on the same episodes; publishing writes a
registry version once, refuses a snapshot whose validation failed, and bad settings are refused
before anything runs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medmeta.errors import MedmetaError
from medmeta.home import Home
from medmeta.training.settings import load_settings
from tests.conftest import TEST_KEY, copy_home
from tests.test_cli import ROOT

pytestmark = pytest.mark.usefixtures("prefect_api")
TASKSET = "flows-records"
SETTINGS = """\
tasksets: [{by: disease, inputs: records, ways: 2, shots: 2, queries: 2, seed: 0, name: flows-records}]
train: {algorithms: [protonet], steps: %(steps)d, meta_batch: 2, val_every: 4, val_episodes: 4, checkpoint_every: 2, patience: null,
        backbone: {records: {name: mlp, hidden: [16]}}}
evaluate: {episodes: 12, shots: [1, 2], baseline_steps: 3, pretrain_steps: 5}
publish: {shots: 2, margin: 0.0}
"""


def settings_file(folder: Path, steps: int = 12) -> Path:
    path = folder / f"settings-{steps}.yaml"
    path.write_text(SETTINGS % {"steps": steps})
    return path


@pytest.fixture(scope="module")
def base(cohort150, tmp_path_factory) -> Path:
    """The session's validated 150-patient home with a records task set; tests copy it."""
    from medmeta.tasksets.build import build_taskset
    from medmeta.tasksets.spec import make_spec

    home = copy_home(cohort150, tmp_path_factory.mktemp("training-flows") / "home")
    build_taskset(Home(home), make_spec("disease", "records", 2, 2, 2, 0, TASKSET))
    return home


@pytest.fixture
def home(base, tmp_path, monkeypatch) -> Home:
    monkeypatch.setenv("MEDMETA_PSEUDONYM_KEY", TEST_KEY)
    return Home(copy_home(base, tmp_path / "home"))


@pytest.mark.parametrize("text,message", [
    ("train: {stepz: 3}", "unknown setting train.stepz"),
    ("train: {steps: many}", "train.steps must be an integer, got 'many'"),
    ("train: {algorithms: [maml, magic]}", "train.algorithms\\[1\\] must be 'maml'"),
    ("evaluate: {shots: [0]}", "evaluate.shots\\[0\\] must be a positive integer, got 0"),
    ("publish: {shots: 3}", "publish.shots \\(3\\) must be one of evaluate.shots"),
    ("- just a list", "must be a mapping"),
    ("tasksets: [{by: disease, sytem: sct}]", "tasksets\\[0\\].sytem is not a known key"),
    ("tasksets: [{inputs: records}]", "tasksets\\[0\\].by is required"),
])
def test_bad_settings_are_refused_naming_the_file_and_the_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(MedmetaError, match=message) as caught:
        load_settings(path)
    assert str(path) in str(caught.value)


def test_train_evaluate_publish_and_a_rerun_does_nothing_again(home, tmp_path):
    from flows.evaluate import evaluate_flow
    from flows.publish import publish_flow
    from flows.train import train_flow
    from medmeta import registry

    config = str(settings_file(tmp_path))
    trained = train_flow(TASKSET, "protonet", str(home.root), config)
    folder = home.training / trained["model"]
    assert not trained["cached"] and trained["steps"] == 12 and trained["device"] == "cpu"
    assert {"weights.safetensors", "curve.png", "result.json", "spec.json"} <= {p.name for p in folder.iterdir()}
    assert train_flow(TASKSET, "protonet", str(home.root), config)["cached"]

    evaluation = evaluate_flow(trained["model"], str(home.root), config)
    assert [e["shots"] for e in evaluation["by_shots"]] == [1, 2]
    for entry in evaluation["by_shots"]:
        assert entry["episodes"] == 12
        assert [r["method"] for r in entry["rows"]] == ["meta", "from_scratch", "pretrain_finetune"]
        assert all(0 <= r["low"] <= r["mean"] <= r["high"] <= 1 for r in entry["rows"])
        assert {p["vs"] for p in entry["paired"]} == {"from_scratch", "pretrain_finetune"}
    assert (folder / "evaluation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    published = publish_flow(trained["model"], str(home.root), config)
    assert (published["ref"], published["decision"], published["cached"]) == (f"{TASKSET}@1", "champion", False)
    card = registry.resolve(home, f"{TASKSET}@champion").card
    assert card["snapshot"] and card["validation_digest"]["success"] and card["task_set"]["name"] == TASKSET
    assert card["metrics"]["accuracy"]["mean"] == pytest.approx(evaluation["by_shots"][1]["rows"][0]["mean"], abs=1e-6)
    assert set(card["deltas"]) == {"from_scratch", "pretrain_finetune"}
    again = publish_flow(trained["model"], str(home.root), config)
    assert again["cached"] and registry.versions(home, TASKSET) == [1]


def test_models_of_a_task_set_share_the_baselines_scores(home, tmp_path):
    """The baselines do not depend on the meta-learner: scored once per episodes and settings."""
    from flows.evaluate import evaluate_flow
    from flows.train import train_flow

    config = settings_file(tmp_path)
    rows = {}
    for algorithm in ("protonet", "matchingnet"):
        model = train_flow(TASKSET, algorithm, str(home.root), str(config))["model"]
        evaluation = evaluate_flow(model, str(home.root), str(config))
        rows[algorithm] = [r for e in evaluation["by_shots"] for r in e["rows"] if r["method"] != "meta"]
    assert rows["protonet"] == rows["matchingnet"]
    assert len(list((home.training / "baselines").glob("*.json"))) == 2  # one per shot count
    config.write_text(config.read_text().replace("baseline_steps: 3", "baseline_steps: 4"))
    model = train_flow(TASKSET, "protonet", str(home.root), str(config))["model"]
    evaluate_flow(model, str(home.root), str(config))
    assert len(list((home.training / "baselines").glob("*.json"))) == 4  # other settings, other scores


def test_publish_refuses_a_snapshot_whose_validation_failed(home, tmp_path):
    from flows.evaluate import evaluate_flow
    from flows.publish import publish_flow
    from flows.train import train_flow
    from medmeta import registry
    from validation.gate import current_snapshot, read_result, record_result

    config = str(settings_file(tmp_path, steps=2))
    model = train_flow(TASKSET, "protonet", str(home.root), config)["model"]
    evaluate_flow(model, str(home.root), config)
    failed = read_result(home, current_snapshot(home))
    failed.update(success=False, critical_failures=[{"table": "patients", "rule": "keys_unique"}])
    record_result(home, failed)
    with pytest.raises(MedmetaError, match="failed validation"):
        publish_flow(model, str(home.root), config)
    assert registry.model_names(home) == []


def test_a_killed_training_resumes_and_ends_with_the_uninterrupted_weights(home, tmp_path):
    """`medmeta train` killed with SIGKILL after a checkpoint, run again: it resumes (does not
    start over) and its weights equal those of a run that was never interrupted."""
    from medmeta.training.train import train_model

    config = settings_file(tmp_path, steps=40)
    twin = Home(tmp_path / "twin")
    shutil.copytree(home.root, twin.root)
    uninterrupted = train_model(twin, TASKSET, "protonet", load_settings(config))

    command = [sys.executable, "-m", "medmeta.cli", "train", "--taskset", TASKSET, "--algo", "protonet",
               "--home", str(home.root), "--config", str(config), "--json"]
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "MEDMETA_PSEUDONYM_KEY": TEST_KEY}
    slow = {**env, "MEDMETA_TEST_STEP_DELAY_S": "0.25"}  # gives the kill a window in the middle of training
    process = subprocess.Popen(command, cwd=ROOT, env=slow, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    checkpoint = home.training / uninterrupted["model"] / "checkpoint" / "checkpoint.safetensors"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert checkpoint.exists(), process.communicate()[1].decode()[-2000:]
    process.send_signal(signal.SIGKILL)
    process.wait()
    from metalearn.checkpoint import read_checkpoint_meta

    killed_at = read_checkpoint_meta(checkpoint)["step"]
    assert 0 < killed_at < 40
    assert not (home.training / uninterrupted["model"] / "result.json").exists()

    rerun = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    resumed = json.loads(rerun.stdout)
    assert resumed["model"] == uninterrupted["model"] and not resumed["cached"]
    assert resumed["steps"] == uninterrupted["steps"] == 40
    ours = load_file(str(home.training / resumed["model"] / "weights.safetensors"))
    theirs = load_file(str(twin.training / resumed["model"] / "weights.safetensors"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
