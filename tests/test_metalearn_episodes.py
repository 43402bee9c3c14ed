"""Bad episodes are refused by name in meta_step, evaluate and adapt; a NaN loss raises
DivergenceError and leaves no gradient behind."""

import pytest
import torch

from metalearn import DivergenceError, EpisodeError, Episodes, build_backbone, build_learner

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

N_WAY = 3
ALGORITHMS = ["maml", "fomaml", "reptile", "protonet", "matchingnet"]


def batch(tasks=2, shots=2, queries=2, features=4) -> Episodes:
    g = torch.Generator().manual_seed(0)
    return Episodes(torch.randn(tasks, N_WAY * shots, features, generator=g),
                    torch.arange(N_WAY).repeat_interleave(shots).repeat(tasks, 1),
                    torch.randn(tasks, N_WAY * queries, features, generator=g),
                    torch.arange(N_WAY).repeat_interleave(queries).repeat(tasks, 1), N_WAY)


def learner(name):
    torch.manual_seed(0)
    return build_learner(name, build_backbone("mlp", in_features=4, hidden=(8,)), n_way=N_WAY)


def _with(b: Episodes, **changes) -> Episodes:
    fields = dict(support_x=b.support_x, support_y=b.support_y, query_x=b.query_x, query_y=b.query_y, n_way=b.n_way)
    return Episodes(**{**fields, **changes})


def bad_batches():
    b = batch()
    nan_x = b.support_x.clone()
    nan_x[1, 0, 2] = float("nan")
    inf_q = b.query_x.clone()
    inf_q[0, 1, 0] = float("inf")
    labels = b.query_y.clone()
    labels[0, 0] = N_WAY
    negative = b.support_y.clone()
    negative[1, 1] = -1
    return {
        "labels must lie in 0..2": _with(b, query_y=labels),
        "labels must lie in 0..2, found -1": _with(b, support_y=negative),
        "empty support set": _with(b, support_x=b.support_x[:, :0], support_y=b.support_y[:, :0]),
        "support inputs contain NaN": _with(b, support_x=nan_x),
        "query inputs contain NaN or inf": _with(b, query_x=inf_q),
        "disagree on tasks and cases": _with(b, query_y=b.query_y[:, :-1]),
        "support has 2 tasks, query 1": _with(b, query_x=b.query_x[:1], query_y=b.query_y[:1]),
        "features": _with(b, query_x=b.query_x[..., :3]),
        "labels must be integers": _with(b, support_y=b.support_y.float()),
        "built for 3-way tasks, the batch is 4-way": _with(b, n_way=4),
    }


@pytest.mark.parametrize("name", ALGORITHMS)
@pytest.mark.parametrize("problem", list(bad_batches()))
def test_bad_batches_are_refused_by_meta_step_and_evaluate(name, problem):
    bad = bad_batches()[problem]
    model = learner(name)
    for call in (model.meta_step, model.evaluate):
        with pytest.raises(EpisodeError, match=problem):
            call(bad)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("name", ["protonet", "matchingnet"])
def test_metric_learners_refuse_a_class_without_support_cases(name):
    b = batch()
    labels = b.support_y.clone()
    labels[1] = torch.tensor([0, 0, 1, 1, 1, 1])
    with pytest.raises(EpisodeError, match="task 1 has no support case of class 2"):
        learner(name).meta_step(_with(b, support_y=labels))
    with pytest.raises(EpisodeError, match="needs classification episodes"):
        learner(name).meta_step(_with(b, support_y=b.support_y.float(), query_y=b.query_y.float(), n_way=None))


def test_regression_and_classification_are_not_mixed():
    b = batch()
    regression = _with(b, support_y=b.support_y.float(), query_y=b.query_y.float(), n_way=None)
    with pytest.raises(EpisodeError, match="built for 3-way tasks, the batch is regression"):
        learner("maml").meta_step(regression)
    reg_learner = build_learner("maml", build_backbone("mlp", in_features=4, hidden=(8,)), n_way=None)
    with pytest.raises(EpisodeError, match="built for regression, the batch is 3-way"):
        reg_learner.meta_step(b)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_adapt_refuses_bad_support_and_query(name):
    b = batch()
    model = learner(name)
    sx, sy = b.support_x[0], b.support_y[0]
    nan = sx.clone()
    nan[0, 0] = float("nan")
    with pytest.raises(EpisodeError, match="NaN"):
        model.adapt(nan, sy)
    with pytest.raises(EpisodeError, match="labels must lie in 0..2"):
        model.adapt(sx, sy + 1)
    with pytest.raises(EpisodeError, match="empty support set"):
        model.adapt(sx[:0], sy[:0])
    with pytest.raises(EpisodeError, match="disagree"):
        model.adapt(sx, sy[:-1])
    predict = model.adapt(sx, sy)
    with pytest.raises(EpisodeError, match="NaN"):
        predict(torch.full((2, 4), float("nan")))
    with pytest.raises(EpisodeError, match="features"):
        predict(torch.randn(2, 5))


@pytest.mark.parametrize("name", ALGORITHMS)
def test_nan_loss_raises_divergence_and_leaves_no_gradients(name):
    model = learner(name)
    b = batch()
    model.meta_step(b)
    assert any(p.grad is not None for p in model.parameters())  # a first, good step left gradients
    with torch.no_grad():
        next(iter(model.parameters()))[0, 0] = float("nan")
    with pytest.raises(DivergenceError, match="NaN|nan"):
        model.meta_step(b)
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(DivergenceError):
        model.evaluate(b)


def test_inf_loss_in_a_later_chunk_leaves_no_gradients():
    """The first task chunk's gradient is already accumulated when the second one diverges."""
    model = build_learner("maml", build_backbone("mlp", in_features=4, hidden=(8,)), n_way=None, task_chunk=1)
    b = batch()
    targets = b.query_y.float()
    targets[1] = 3e38  # finite (float32), but its square is not: task 1's loss is inf
    with pytest.raises(DivergenceError, match="inf"):
        model.meta_step(_with(b, support_y=b.support_y.float(), query_y=targets, n_way=None))
    assert all(p.grad is None for p in model.parameters())
