"""The trainer with real (tiny) learners: learning, callbacks, interrupts, divergence, early stopping, checkpoints."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from safetensors.torch import save_file

from metalearn.checkpoint import (CHECKPOINT_NAME, CheckpointError, load_checkpoint, load_weights,
                                  read_checkpoint_meta, save_weights)
from metalearn.episodes import DivergenceError, EpisodeError, Episodes
from metalearn.trainer import StepReport, Trainer, TrainingInterrupted, ValidationReport
from tests.metalearn_toy import TinyFOMAML, TinyProto, clusters, sinusoids

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

VAL = clusters(0, tasks=10, split="test", seed=1)


def proto(seed: int = 0, **kwargs) -> TinyProto:
    torch.manual_seed(seed)
    return TinyProto(hidden=16, embedding=8, **kwargs)


def train_sample(step: int) -> Episodes:
    return clusters(step, tasks=4)


def test_training_learns_and_reports_every_step_and_validation(tmp_path):
    learner = proto()
    before = Trainer(learner, train_sample, max_steps=1, val_episodes=VAL).validate()
    steps: list[StepReport] = []
    validations: list[ValidationReport] = []
    result = Trainer(learner, train_sample, max_steps=40, lr=5e-3, val_episodes=VAL, val_every=10,
                     checkpoint_dir=tmp_path, on_step=steps.append, on_validation=validations.append).fit()
    assert result.stop_reason == "max_steps" and result.steps == 40 and result.device == "cpu"
    assert [r.step for r in steps] == list(range(1, 41)) and all(r.max_steps == 40 for r in steps)
    assert [h["step"] for h in result.history] == list(range(1, 41))
    assert [v.step for v in validations] == [10, 20, 30, 40] and validations[0].monitor == "accuracy"
    assert result.best_value == max(v.value for v in validations) > before.accuracy + 0.2
    after = Trainer(learner, train_sample, max_steps=1, val_episodes=VAL).validate()
    assert after.accuracy == result.best_value  # the learner holds the best validated weights
    meta = read_checkpoint_meta(tmp_path / CHECKPOINT_NAME)
    assert meta["step"] == 40 and meta["trainer"]["stop_reason"] == "max_steps"


def test_a_finished_run_is_returned_as_is_and_more_steps_train_on(tmp_path):
    kwargs = dict(lr=5e-3, val_episodes=VAL, val_every=5, checkpoint_dir=tmp_path)
    first = Trainer(proto(), train_sample, max_steps=10, **kwargs).fit()
    calls: list[StepReport] = []
    again = Trainer(proto(), train_sample, max_steps=10, on_step=calls.append, **kwargs).fit()
    assert calls == [] and again.history == first.history and again.best_step == first.best_step
    longer = Trainer(proto(), train_sample, max_steps=15, on_step=calls.append, **kwargs).fit()
    assert [r.step for r in calls] == [11, 12, 13, 14, 15] and longer.history[:10] == first.history


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_finishes_the_step_writes_a_checkpoint_and_resume_continues(signum, tmp_path):
    def stop_at_7(report: StepReport) -> None:
        if report.step == 7:
            os.kill(os.getpid(), signum)

    previous = signal.getsignal(signum)
    with pytest.raises(TrainingInterrupted) as caught:
        Trainer(proto(), train_sample, max_steps=20, checkpoint_dir=tmp_path, checkpoint_every=100,
                on_step=stop_at_7).fit()
    assert signal.getsignal(signum) is previous  # the handler is put back
    assert caught.value.step == 7 and caught.value.checkpoint == tmp_path / CHECKPOINT_NAME
    assert read_checkpoint_meta(tmp_path / CHECKPOINT_NAME)["step"] == 7
    steps: list[int] = []
    result = Trainer(proto(), train_sample, max_steps=20, checkpoint_dir=tmp_path, checkpoint_every=100,
                     on_step=lambda r: steps.append(r.step)).fit()
    assert steps == list(range(8, 21)) and result.steps == 20 and len(result.history) == 20


def test_a_diverging_run_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    torch.manual_seed(0)
    learner = TinyFOMAML(hidden=16)
    losses: list[float] = []
    trainer = Trainer(learner, lambda step: sinusoids(step, tasks=4), max_steps=30, lr=10.0, optimizer="sgd",
                      checkpoint_dir=tmp_path, checkpoint_every=2, on_step=lambda r: losses.append(r.loss))
    with pytest.raises(DivergenceError, match="last good checkpoint"):
        trainer.fit()
    diverged_at = len(losses) + 1
    assert diverged_at > 2
    path = tmp_path / CHECKPOINT_NAME
    last_good = read_checkpoint_meta(path)["step"]
    assert last_good == 2 * ((diverged_at - 1) // 2) and last_good < diverged_at
    torch.manual_seed(1)
    fresh = TinyFOMAML(hidden=16)
    ckpt = load_checkpoint(path, fresh, config=trainer.config)
    assert ckpt.step == last_good
    assert all(torch.isfinite(p).all() for p in fresh.parameters())


def test_early_stopping_stops_after_patience_validations_without_improvement(tmp_path):
    learner = proto()
    result = Trainer(learner, train_sample, max_steps=100, lr=1e-9, val_episodes=VAL, val_every=2, patience=3,
                     checkpoint_dir=tmp_path).fit()
    assert result.stop_reason == "early_stopping" and result.steps == 8
    assert result.best_step == 2 and [v["bad_validations"] for v in result.validations] == [0, 1, 2, 3]
    meta = read_checkpoint_meta(tmp_path / CHECKPOINT_NAME)
    assert meta["trainer"]["stop_reason"] == "early_stopping" and meta["trainer"]["best_step"] == 2


def test_checkpoints_of_another_config_learner_or_shape_are_refused(tmp_path):
    trainer = Trainer(proto(), train_sample, max_steps=2, checkpoint_dir=tmp_path, config={"problem": "clusters"})
    trainer.fit()
    path = tmp_path / CHECKPOINT_NAME
    with pytest.raises(CheckpointError, match=r"another config.*problem"):
        Trainer(proto(), train_sample, max_steps=4, checkpoint_dir=tmp_path, config={"problem": "other"}).fit()
    with pytest.raises(CheckpointError, match=r"lr"):
        Trainer(proto(), train_sample, max_steps=4, lr=0.5, checkpoint_dir=tmp_path,
                config={"problem": "clusters"}).fit()
    torch.manual_seed(0)
    wider = TinyProto(hidden=24, embedding=8)
    with pytest.raises(CheckpointError, match=r"shapes.*net\.0\.weight"):
        load_checkpoint(path, wider)
    with pytest.raises(CheckpointError, match="tiny-proto"):
        load_checkpoint(path, TinyFOMAML())
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="garbage.safetensors"):
        load_checkpoint(garbage, proto())
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated.safetensors"):
        load_checkpoint(truncated, proto())
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="no medmeta metadata"):
        load_checkpoint(foreign, proto())


def test_weights_round_trip_through_safetensors(tmp_path):
    learner = proto()
    Trainer(learner, train_sample, max_steps=3).fit()
    save_weights(tmp_path / "model.safetensors", learner, {"algorithm": "tiny-proto"})
    other = proto(seed=5)
    assert load_weights(tmp_path / "model.safetensors", other) == {"algorithm": "tiny-proto"}
    for (k, a), (_, b) in zip(learner.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), k


def test_bad_episodes_from_the_sampler_are_refused():
    def bad(step: int) -> Episodes:
        e = clusters(step, tasks=2)
        return Episodes(e.support_x, e.support_y + 5, e.query_x, e.query_y, e.n_way)

    with pytest.raises(EpisodeError, match="labels must lie in 0..4"):
        Trainer(proto(), bad, max_steps=2).fit()
    with pytest.raises(ValueError, match="unknown optimizer"):
        Trainer(proto(), train_sample, max_steps=2, optimizer="lion")


@pytest.mark.parametrize("name", ["maml", "fomaml", "reptile", "protonet", "matchingnet"])
def test_each_algorithm_resumes_exactly_after_an_interrupt(name, tmp_path):
    from metalearn import build_backbone, build_learner

    def learner():
        torch.manual_seed(0)
        return build_learner(name, build_backbone("mlp", in_features=16, hidden=(16,)), n_way=5)

    def trainer(model, run_dir, on_step=None):
        return Trainer(model, train_sample, max_steps=10, lr=5e-3, val_episodes=VAL, val_every=3, patience=10,
                       checkpoint_dir=run_dir, checkpoint_every=4, seed=3, on_step=on_step)

    straight = learner()
    expected = trainer(straight, tmp_path / "straight").fit()

    def stop_at_5(report: StepReport) -> None:
        if report.step == 5:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted):
        trainer(learner(), tmp_path / "resumed", stop_at_5).fit()
    resumed = learner()
    result = trainer(resumed, tmp_path / "resumed").fit()
    assert result.history == expected.history and result.validations == expected.validations
    for (key, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), key
