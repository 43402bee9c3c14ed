"""Evaluation: interval math, per-episode scores, and every algorithm against the baselines on the same episodes."""

from __future__ import annotations

import math

import pytest
import torch

from metalearn import build_backbone, build_learner
from metalearn.baselines import FromScratch, PretrainFineTune
from metalearn.evaluation import compare, confidence_interval, episode_scores, evaluate_with_baselines, score
from metalearn.trainer import Trainer
from tests.metalearn_toy import FEATURES, TinyProto, cluster_pretraining_data, clusters, sinusoids

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

TEST = clusters(0, tasks=40, split="test", seed=2, shots=5)


def backbone():
    return build_backbone("mlp", in_features=FEATURES, hidden=(32, 32))


def test_confidence_interval_of_a_known_sample():
    mean, half = confidence_interval([1, 2, 3, 4, 5])  # sd = sqrt(2.5), n = 5
    assert mean == 3.0 and half == pytest.approx(1.959964 * math.sqrt(2.5) / math.sqrt(5), rel=1e-6)
    assert confidence_interval([1, 2, 3, 4, 5], level=0.99)[1] == pytest.approx(2.575829 * math.sqrt(0.5), rel=1e-6)
    assert confidence_interval([0.7]) == (0.7, 0.0)
    assert confidence_interval([0.5] * 600) == (0.5, 0.0)
    with pytest.raises(ValueError, match="no values"):
        confidence_interval([])


class Constant:
    """Predicts class 0 (or 0.0) for every query: its scores are known from the labels alone."""

    def __init__(self, n_way: int | None):
        self.n_way = n_way

    def adapt(self, support_x, support_y):
        if self.n_way is None:
            return lambda qx: torch.zeros(qx.shape[0])
        return lambda qx: torch.nn.functional.one_hot(torch.zeros(qx.shape[0], dtype=torch.long), self.n_way).float()


def test_scores_are_per_episode_accuracy_or_mse():
    episodes = clusters(0, tasks=6, split="test", query=4)  # 5-way: each query set holds 4 of each class
    assert episode_scores(Constant(5), episodes) == [0.2] * 6
    waves = sinusoids(0, tasks=5)
    expected = [float((waves.query_y[i] ** 2).mean()) for i in range(5)]
    assert episode_scores(Constant(None), [waves.task(i) for i in range(5)]) == pytest.approx(expected, rel=1e-6)
    result = score(Constant(None), waves)
    assert result.metric == "mse" and result.episodes == 5 and result.mean == pytest.approx(sum(expected) / 5)
    assert result.low < result.mean < result.high


def test_a_classifier_returning_the_wrong_shape_is_refused():
    class Wrong(Constant):
        def adapt(self, support_x, support_y):
            return lambda qx: torch.zeros(qx.shape[0], 3)

    with pytest.raises(ValueError, match=r"logits \[25, 5\]"):
        episode_scores(Wrong(5), clusters(0, tasks=1))


def test_compare_scores_every_method_on_the_same_episodes():
    torch.manual_seed(0)
    learner = TinyProto(hidden=16, embedding=8)
    Trainer(learner, lambda step: clusters(step, tasks=4, shots=5), max_steps=60, lr=5e-3).fit()
    x, y = cluster_pretraining_data()
    table = evaluate_with_baselines(learner, TEST, backbone_factory=backbone, pretrain_x=x, pretrain_y=y,
                                    from_scratch={"steps": 30}, pretrain={"pretrain_steps": 150})
    again = compare({"tiny-proto": learner, "from_scratch": FromScratch(backbone, 5, steps=30),
                     "pretrain_finetune": PretrainFineTune(backbone, 5, x, y, pretrain_steps=150)}, TEST)
    assert again == table  # seeded: the same table
    assert table["metric"] == "accuracy" and table["higher_is_better"] and table["episodes"] == 40
    assert [r["method"] for r in table["rows"]] == ["tiny-proto", "from_scratch", "pretrain_finetune"]
    assert all(len(v) == 40 for v in table["per_episode"].values())
    rows = {r["method"]: r for r in table["rows"]}
    paired = {p["vs"]: p for p in table["paired"]}
    for name in ("from_scratch", "pretrain_finetune"):
        diff = [a - b for a, b in zip(table["per_episode"]["tiny-proto"], table["per_episode"][name])]
        assert paired[name]["mean_difference"] == pytest.approx(sum(diff) / 40)
        assert paired[name]["wins"] == sum(d > 0 for d in diff)
    assert paired["from_scratch"]["mean_difference"] - paired["from_scratch"]["ci95"] > 0
    assert rows["pretrain_finetune"]["mean"] > rows["from_scratch"]["mean"]


def test_baselines_take_fused_dict_inputs():
    def fusion():
        return build_backbone("fusion", image={"in_channels": 1, "hidden": 8, "image_size": 16},
                              record={"in_features": 3, "hidden": [8]})

    g = torch.Generator().manual_seed(0)
    sx = {"image": torch.rand(6, 1, 16, 16, generator=g), "record": torch.randn(6, 3, generator=g)}
    sy = torch.tensor([0, 0, 1, 1, 2, 2])
    qx = {"image": torch.rand(4, 1, 16, 16, generator=g), "record": torch.randn(4, 3, generator=g)}
    assert FromScratch(fusion, 3, steps=3).adapt(sx, sy)(qx).shape == (4, 3)
    train_x = {"image": torch.rand(20, 1, 16, 16, generator=g), "record": torch.randn(20, 3, generator=g)}
    for mode in ("head", "all"):
        baseline = PretrainFineTune(fusion, 3, train_x, torch.arange(20) % 7, pretrain_steps=3, batch_size=8,
                                    finetune_steps=3, finetune=mode)
        assert baseline.adapt(sx, sy)(qx).shape == (4, 3)
        assert baseline.network.head.out_features == 7  # pretrained over all seven meta-train classes
    regression = PretrainFineTune(fusion, None, train_x, torch.randn(20), pretrain_steps=3, finetune_steps=3)
    assert regression.adapt(sx, torch.randn(6))(qx).shape == (4,)


ALGORITHMS = {  # name: (learner config, outer optimizer, outer lr)
    "maml": ({"inner_lr": 0.5, "inner_steps": 3}, "adam", 1e-2),
    "fomaml": ({"inner_lr": 0.1, "inner_steps": 5}, "adam", 1e-2),
    "reptile": ({"inner_lr": 0.1, "inner_steps": 5}, "adam", 1e-2),
    "protonet": ({}, "adam", 3e-3),
    "matchingnet": ({}, "adam", 3e-3),
}


@pytest.fixture(scope="module")
def from_scratch_scores():
    torch.manual_seed(0)
    return episode_scores(FromScratch(backbone, 5, steps=30), TEST)


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_each_algorithm_beats_training_from_scratch(name, from_scratch_scores):
    config, optimizer, lr = ALGORITHMS[name]
    torch.manual_seed(0)
    learner = build_learner(name, backbone(), n_way=5, **config)
    Trainer(learner, lambda step: clusters(step, tasks=8, shots=5), max_steps=200, lr=lr, optimizer=optimizer).fit()
    ours = episode_scores(learner, TEST)
    diff, half = confidence_interval([a - b for a, b in zip(ours, from_scratch_scores)])
    assert diff - half > 0, f"{name}: {sum(ours) / 40:.3f} vs from scratch {sum(from_scratch_scores) / 40:.3f}"


def test_scores_already_known_are_taken_as_they_are_and_checked():
    episodes = clusters(0, tasks=6, split="test", query=4)
    scratch = FromScratch(backbone, 5, steps=5)
    full = compare({"constant": Constant(5), "from_scratch": scratch}, episodes, seed=3)
    again = compare({"constant": Constant(5), "from_scratch": full["per_episode"]["from_scratch"]}, episodes, seed=3)
    assert again == full
    with pytest.raises(ValueError, match="5 known scores for 6 episodes"):
        compare({"constant": Constant(5), "from_scratch": [0.5] * 5}, episodes)
    with pytest.raises(ValueError, match="at least one method to score"):
        compare({"from_scratch": [0.5] * 6}, episodes)


def test_the_support_fit_stops_once_the_loss_is_small():
    from metalearn.baselines import _fit

    task = TEST.task(0)
    sx, sy = task.support_x[0], task.support_y[0]

    def fitted(stop_loss: float) -> tuple[int, float]:
        torch.manual_seed(0)
        model = torch.nn.Sequential(backbone(), torch.nn.LazyLinear(5))
        model(sx)
        steps = _fit(model, list(model.parameters()), sx, sy, steps=300, lr=1e-2, regression=False,
                     stop_loss=stop_loss)
        return steps, float(torch.nn.functional.cross_entropy(model(sx), sy).detach())

    all_steps, low = fitted(0.0)
    stopped, loss = fitted(0.05)
    assert all_steps == 300 and low < 0.05
    assert 0 < stopped < 300 and loss < 0.05
    with pytest.raises(ValueError, match="stop_loss >= 0"):
        FromScratch(backbone, 5, stop_loss=-1.0)
    with pytest.raises(ValueError, match="steps >= 0"):
        PretrainFineTune(backbone, 5, torch.zeros(4, FEATURES), torch.arange(4), finetune_steps=-1)
