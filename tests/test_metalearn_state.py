"""An adaptation as tensors: ``adapted_state`` then ``predict_with_state`` (on another learner of the
same architecture, after a safetensors round trip) predicts exactly what ``adapt`` predicts, holds no
support input, and a state or query that does not fit is refused by name."""

import pytest
import torch
from safetensors.torch import load, save

from metalearn import AdaptedStateError, EpisodeError, build_backbone, build_learner
from tests.metalearn_toy import tiny_backbone

pytestmark = pytest.mark.usefixtures("one_torch_thread")
N_WAY = 3
ALGORITHMS = ["maml", "fomaml", "reptile", "protonet", "matchingnet"]
CONFIG = {"maml": {"inner_steps": 2, "inner_lr": 0.3, "learn_inner_lr": True}, "fomaml": {"inner_lr": 0.3},
          "reptile": {"inner_steps": 2, "inner_lr": 0.3}, "protonet": {"distance": "euclidean"},
          "matchingnet": {}}


def backbone(kind: str):
    return tiny_backbone(kind, channels=1)


def inputs(kind: str, cases: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(cases, 1, 16, 16, generator=g)
    record = torch.randn(cases, 4, generator=g)
    return {"mlp": record, "conv4": image}.get(kind, {"image": image, "record": record})


def learner(name: str, kind: str, seed: int = 0, n_way=N_WAY):
    torch.manual_seed(seed)
    return build_learner(name, backbone(kind), n_way=n_way, **CONFIG[name])


def shapes(x) -> set:
    return {tuple(v.shape) for v in x.values()} if isinstance(x, dict) else {tuple(x.shape)}


@pytest.mark.parametrize("kind", ["mlp", "conv4", "fusion"])
@pytest.mark.parametrize("name", ALGORITHMS)
def test_state_predicts_exactly_what_adapt_predicts(name, kind):
    model = learner(name, kind)
    sx, sy = inputs(kind, 7, seed=1), torch.tensor([0, 1, 2, 2, 1, 0, 2])  # 7 cases: no weight is [7, ...]
    qx = inputs(kind, 5, seed=2)
    expected = model.adapt(sx, sy)(qx)

    state = model.adapted_state(sx, sy)
    stored = load(save(state))  # the safetensors round trip a published model makes
    other = learner(name, kind, seed=99)  # same architecture, other weights: the state alone decides
    assert not torch.equal(next(other.parameters()), next(model.parameters()))
    got = other.predict_with_state(stored, qx)
    assert torch.equal(got, expected)
    assert got.shape == (5, N_WAY) and not got.requires_grad

    raw = shapes(sx) | shapes(qx)
    assert not any(tuple(t.shape) in raw for t in state.values()), "a state must not hold support inputs"
    expected_keys = {"maml": set(), "fomaml": set(), "reptile": set(), "protonet": {"prototypes"},
                     "matchingnet": {"support_embeddings", "support_labels"}}[name]
    assert {k for k in state if not k.startswith("params.")} == expected_keys


@pytest.mark.parametrize("name", ["maml", "reptile"])
def test_adapted_weights_differ_from_the_meta_weights(name):
    model = learner(name, "mlp")
    state = model.adapted_state(inputs("mlp", 6, 1), torch.tensor([0, 1, 2, 2, 1, 0]))
    head = dict(model.net.named_parameters())["head.weight"]
    assert not torch.equal(state["params.head.weight"], head.detach())


def test_regression_state_round_trip():
    model = learner("maml", "mlp", n_way=None)
    sx, sy, qx = inputs("mlp", 5, 1), torch.randn(5), inputs("mlp", 4, 2)
    got = learner("maml", "mlp", seed=3, n_way=None).predict_with_state(load(save(model.adapted_state(sx, sy))), qx)
    assert torch.equal(got, model.adapt(sx, sy)(qx)) and got.shape == (4,)


def test_protonet_without_a_fixed_n_way_keeps_its_support_ways():
    model = learner("protonet", "mlp", n_way=None)
    sx, sy = inputs("mlp", 4, 1), torch.tensor([0, 1, 0, 1])
    state = model.adapted_state(sx, sy)
    assert state["prototypes"].shape == (2, 8)
    assert model.predict_with_state(state, inputs("mlp", 3, 2)).shape == (3, 2)


@pytest.mark.parametrize("name", ["protonet", "matchingnet", "fomaml"])
def test_a_state_that_does_not_fit_is_refused_by_name(name):
    model = learner(name, "mlp")
    sx, sy, qx = inputs("mlp", 6, 1), torch.tensor([0, 1, 2, 2, 1, 0]), inputs("mlp", 3, 2)
    state = model.adapted_state(sx, sy)
    weight = next(k for k in state if k.endswith("layers.0.weight"))  # MAML: params.backbone.layers...
    missing = {k: v for k, v in state.items() if k != weight}
    with pytest.raises(AdaptedStateError, match=f"missing: {weight}"):
        model.predict_with_state(missing, qx)
    with pytest.raises(AdaptedStateError, match="unknown: extra"):
        model.predict_with_state({**state, "extra": torch.zeros(1)}, qx)
    with pytest.raises(AdaptedStateError, match=f"{weight} has shape"):
        model.predict_with_state({**state, weight: torch.zeros(8, 5)}, qx)
    with pytest.raises(AdaptedStateError, match="NaN or inf"):
        model.predict_with_state({**state, weight: torch.full((8, 4), float("nan"))}, qx)
    # the state of another architecture
    wide = build_learner(name, build_backbone("mlp", in_features=4, hidden=(9, 8)), n_way=N_WAY, **CONFIG[name])
    with pytest.raises(AdaptedStateError, match="shape"):
        wide.predict_with_state(state, qx)


def test_matchingnet_labels_must_cover_every_class():
    model = learner("matchingnet", "mlp")
    state = model.adapted_state(inputs("mlp", 6, 1), torch.tensor([0, 1, 2, 2, 1, 0]))
    with pytest.raises(AdaptedStateError, match="cover 0..2"):
        model.predict_with_state({**state, "support_labels": torch.tensor([0, 1, 1, 1, 1, 0])}, inputs("mlp", 2, 2))
    with pytest.raises(AdaptedStateError, match="integers"):
        model.predict_with_state({**state, "support_labels": state["support_labels"].float()}, inputs("mlp", 2, 2))


@pytest.mark.parametrize("kind", ["mlp", "conv4", "fusion"])
def test_a_query_that_does_not_fit_is_refused_by_name(kind):
    model = learner("protonet", kind)
    state = model.adapted_state(inputs(kind, 3, 1), torch.tensor([0, 1, 2]))
    wrong = {"mlp": torch.zeros(2, 5), "conv4": torch.zeros(2, 1, 20, 20),
             "fusion": {"image": torch.zeros(2, 1, 16, 16), "record": torch.zeros(2, 3)}}[kind]
    with pytest.raises(EpisodeError, match="expected \\[cases"):
        model.predict_with_state(state, wrong)
    other_kind = inputs("mlp", 2, 0) if kind != "mlp" else inputs("conv4", 2, 0)
    with pytest.raises(EpisodeError):
        model.predict_with_state(state, other_kind)
    empty = {k: v[:0] for k, v in inputs(kind, 2, 0).items()} if kind == "fusion" else inputs(kind, 2, 0)[:0]
    with pytest.raises(EpisodeError, match="empty query set"):
        model.predict_with_state(state, empty)
    nan = inputs(kind, 2, 0)
    (nan["record"] if kind == "fusion" else nan).view(-1)[0] = float("nan")
    with pytest.raises(EpisodeError, match="NaN or inf"):
        model.predict_with_state(state, nan)


def test_maml_from_a_zero_head_adapts_to_a_prototype_classifier():
    """From a zero head one inner step gives class c the weights lr/N (mean_c - mean of all)."""
    torch.manual_seed(0)
    model = build_learner("maml", tiny_backbone("mlp").double(), n_way=3, inner_lr=0.3, zero_head=True).double()
    assert not model.net.head.weight.any() and not model.net.head.bias.any()
    x, y = torch.randn(9, 4, dtype=torch.float64), torch.tensor([0, 1, 2] * 3)
    state = model.adapted_state(x, y)
    with torch.no_grad():
        features = model.net.backbone(x)
    means = torch.stack([features[y == c].mean(0) for c in range(3)])
    expected = 0.3 / 3 * (means - features.mean(0))
    torch.testing.assert_close(state["params.head.weight"], expected, rtol=1e-12, atol=1e-12)
    assert state["params.head.bias"].abs().max() < 1e-15
    for name, value in model.net.backbone.named_parameters():  # a zero head passes no gradient back
        assert torch.equal(state[f"params.backbone.{name}"], value.detach())
