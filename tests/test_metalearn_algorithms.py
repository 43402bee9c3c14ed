"""The algorithms as a user meets them: build_learner, adapt/predict shapes, evaluate agreeing
with adapt, meta_step leaving gradients but not stepping, safetensors round trips."""

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from metalearn import EpisodeError, Episodes, build_backbone, build_learner
from tests.metalearn_toy import tiny_backbone

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

N_WAY = 3
ALGORITHMS = ["maml", "fomaml", "reptile", "protonet", "matchingnet"]
CONFIG = {"maml": {"inner_steps": 2, "inner_lr": 0.3, "learn_inner_lr": True}, "fomaml": {"inner_lr": 0.3},
          "reptile": {"inner_steps": 2, "inner_lr": 0.3}, "protonet": {"distance": "cosine"}, "matchingnet": {}}


def backbone(kind: str):
    return tiny_backbone(kind, channels=2)


def inputs(kind: str, *lead, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = lambda: torch.randn(*lead, 2, 16, 16, generator=g)  # noqa: E731
    record = lambda: torch.randn(*lead, 4, generator=g)  # noqa: E731
    return {"mlp": record, "conv4": image}.get(kind, lambda: {"image": image(), "record": record()})()


def batch(kind: str, tasks=2, shots=2, queries=3, regression=False) -> Episodes:
    sy = torch.arange(N_WAY).repeat_interleave(shots).repeat(tasks, 1)
    qy = torch.arange(N_WAY).repeat_interleave(queries).repeat(tasks, 1)
    if regression:
        sy, qy = torch.randn(sy.shape), torch.randn(qy.shape)
    return Episodes(inputs(kind, tasks, sy.shape[1]), sy, inputs(kind, tasks, qy.shape[1], seed=1), qy,
                    None if regression else N_WAY)


def first(x):
    """Task 0 of a batch's inputs (a tensor or a fused dict)."""
    return {k: v[0] for k, v in x.items()} if isinstance(x, dict) else x[0]


def learner(name, kind, n_way=N_WAY):
    torch.manual_seed(0)
    return build_learner(name, backbone(kind), n_way=n_way, **CONFIG[name])


@pytest.mark.parametrize("kind", ["mlp", "conv4", "fusion"])
@pytest.mark.parametrize("name", ALGORITHMS)
def test_adapt_predicts_logits_and_evaluate_agrees_with_it(name, kind):
    model = learner(name, kind)
    b = batch(kind, tasks=1)
    logits = model.adapt(first(b.support_x), b.support_y[0])(first(b.query_x))
    assert logits.shape == (N_WAY * 3, N_WAY) and torch.isfinite(logits).all() and not logits.requires_grad
    metrics = model.evaluate(b)
    assert metrics.loss == pytest.approx(float(F.cross_entropy(logits, b.query_y[0])), rel=1e-5)
    assert metrics.accuracy == pytest.approx(float((logits.argmax(1) == b.query_y[0]).float().mean()))


@pytest.mark.parametrize("name", ["maml", "fomaml", "reptile"])
def test_regression_predicts_one_value_per_case(name):
    model = learner(name, "mlp", n_way=None)
    b = batch("mlp", tasks=1, regression=True)
    out = model.adapt(b.support_x[0], b.support_y[0])(b.query_x[0])
    assert out.shape == (N_WAY * 3,)
    assert model.evaluate(b).loss == pytest.approx(float(((out - b.query_y[0]) ** 2).mean()), rel=1e-5)
    assert model.evaluate(b).accuracy is None


@pytest.mark.parametrize("name", ALGORITHMS)
def test_meta_step_leaves_gradients_and_does_not_step(name):
    model = learner(name, "conv4")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    metrics = model.meta_step(batch("conv4"))
    assert 0.0 <= metrics.accuracy <= 1.0 and metrics.loss > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().max()) > 0 for g in grads)
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("kind", ["mlp", "conv4"])
@pytest.mark.parametrize("name", ALGORITHMS)
def test_state_dict_round_trip_through_safetensors_gives_identical_predictions(name, kind, tmp_path):
    model = learner(name, kind)
    model.meta_step(batch(kind))
    torch.optim.SGD(model.parameters(), lr=0.1).step()  # weights no fresh build has
    save_file(model.state_dict(), tmp_path / "model.safetensors")
    torch.manual_seed(123)
    fresh = build_learner(name, backbone(kind), n_way=N_WAY, **CONFIG[name])
    fresh.load_state_dict(load_file(tmp_path / "model.safetensors"))
    b = batch(kind, tasks=1)
    a = model.adapt(b.support_x[0], b.support_y[0])(b.query_x[0])
    c = fresh.adapt(b.support_x[0], b.support_y[0])(b.query_x[0])
    assert torch.equal(a, c)


def test_meta_sgd_rates_are_learned_and_saved():
    model = learner("maml", "mlp")
    keys = [k for k in model.state_dict() if k.startswith("inner_lrs.")]
    assert len(keys) == len(list(model.net.parameters()))
    model.meta_step(batch("mlp"))
    assert all(model.inner_lrs[k.split(".", 1)[1]].grad.abs().max() > 0 for k in keys)
    plain = build_learner("maml", backbone("mlp"), n_way=N_WAY)
    assert not any(k.startswith("inner_lrs.") for k in plain.state_dict())


def test_build_learner_refuses_unknown_names_and_settings():
    with pytest.raises(ValueError, match="unknown algorithm 'mamll'"):
        build_learner("mamll", backbone("mlp"), n_way=3)
    with pytest.raises(ValueError, match=r"protonet does not take \['inner_lr'\]"):
        build_learner("protonet", backbone("mlp"), inner_lr=0.1)
    with pytest.raises(ValueError, match="strategy must be one of"):
        build_learner("maml", backbone("mlp"), n_way=3, strategy="fast")
    with pytest.raises(ValueError, match="distance must be"):
        build_learner("protonet", backbone("mlp"), distance="manhattan")
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("resnet")
    with pytest.raises(ValueError, match="at least 16 pixels"):
        build_backbone("conv4", image_size=8)


def test_conv4_embedding_widths_for_28_and_64_pixel_images():
    for size, width in ((28, 64), (64, 1024)):
        net = build_backbone("conv4", in_channels=1, hidden=64, image_size=size)
        assert net.out_features == width
        assert net(torch.randn(2, 1, size, size)).shape == (2, width)


def test_metric_learner_without_n_way_infers_it_from_the_support_labels():
    model = build_learner("protonet", backbone("mlp"))
    b = batch("mlp", tasks=1)
    assert model.adapt(b.support_x[0], b.support_y[0])(b.query_x[0]).shape == (N_WAY * 3, N_WAY)
    with pytest.raises(EpisodeError, match="no support case of class"):
        model.adapt(b.support_x[0][:4], torch.tensor([0, 0, 2, 2]))
