"""The baselines fitted many episodes at once (metalearn/stacked.py) against the plain per-episode
loop, in float64: the same query outputs (to 1e-9), the same early stops, the same scores however
the episodes are grouped; and the evaluation's progress every tenth of the episodes."""

from __future__ import annotations

import pytest
import torch

from metalearn import build_backbone
from metalearn.baselines import FromScratch, PretrainFineTune, _fit
from metalearn.episodes import Episodes
from metalearn.evaluation import compare, episode_scores, episode_seed
from metalearn.stacked import fit_stacked, stack_parameters, stacked_head

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

WAYS, SHOTS, QUERIES, TASKS = 3, 3, 2, 4


def backbone(kind: str):
    if kind == "conv4":
        return lambda: build_backbone("conv4", in_channels=1, hidden=4, image_size=16).double()
    return lambda: build_backbone("mlp", in_features=6, hidden=[8, 8]).double()


def episodes(kind: str, tasks: int = TASKS, seed: int = 0) -> Episodes:
    g = torch.Generator().manual_seed(seed)
    shape = (1, 16, 16) if kind == "conv4" else (6,)
    centres = torch.rand(tasks, WAYS, 1, *shape, generator=g, dtype=torch.float64)

    def draw(n: int):
        noise = 0.5 * torch.randn(tasks, WAYS, n, *shape, generator=g, dtype=torch.float64)
        return (centres + noise).reshape(tasks, WAYS * n, *shape)

    labels = lambda n: torch.arange(WAYS).repeat_interleave(n).expand(tasks, -1).contiguous()  # noqa: E731
    return Episodes(draw(SHOTS), labels(SHOTS), draw(QUERIES), labels(QUERIES), n_way=WAYS)


def baseline(name: str, kind: str, *, stacked: bool = True, per: int | None = None, stop_loss: float = 0.0):
    factory = backbone(kind)
    if name == "from_scratch":
        return FromScratch(factory, WAYS, steps=8, lr=0.05, stop_loss=stop_loss, stacked=stacked,
                           episodes_per_batch=per)
    g = torch.Generator().manual_seed(1)
    shape = (1, 16, 16) if kind == "conv4" else (6,)
    return PretrainFineTune(factory, WAYS, torch.rand(30, *shape, generator=g, dtype=torch.float64),
                            torch.arange(30) % 5, pretrain_steps=4, batch_size=8, finetune_steps=8, finetune_lr=0.05,
                            stop_loss=stop_loss, finetune=name.split("-")[1], stacked=stacked, episodes_per_batch=per)


CASES = [(name, kind) for kind in ("mlp", "conv4") for name in ("from_scratch", "pretrain-head", "pretrain-all")]


@pytest.mark.parametrize("name,kind", CASES)
def test_stacked_fits_give_the_per_episode_loops_outputs_in_float64(name, kind):
    test = episodes(kind)
    seeds = [episode_seed(5, i) for i in range(TASKS)]
    stacked = baseline(name, kind).adapt_many(test.support_x, test.support_y, seeds)(test.query_x)
    loop = baseline(name, kind, stacked=False)
    for i, seed in enumerate(seeds):
        torch.default_generator.manual_seed(seed)
        alone = loop.adapt(test.support_x[i], test.support_y[i])(test.query_x[i])
        torch.testing.assert_close(stacked[i], alone, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name,kind", CASES)
def test_scores_do_not_depend_on_how_episodes_are_grouped(name, kind):
    test = episodes(kind, seed=2)
    loop = episode_scores(baseline(name, kind, stacked=False, stop_loss=0.3), test, seed=3)
    for per in (1, 3, TASKS):  # one at a time, a group and a remainder, all at once
        assert episode_scores(baseline(name, kind, per=per, stop_loss=0.3), test, seed=3) == loop


@pytest.mark.parametrize("regression", [False, True])
def test_each_episode_stops_where_it_would_alone(regression):
    """Early stopping is per episode: the steps each took and the weights it stopped with are those
    of fitting it alone with ``_fit``; the episodes still fitting carry on unaffected."""
    g = torch.Generator().manual_seed(4)
    tasks, n = 6, 9
    x = torch.randn(tasks, n, 5, generator=g, dtype=torch.float64)
    y = torch.randn(tasks, n, generator=g, dtype=torch.float64) if regression else torch.randint(3, (tasks, n), generator=g)
    outputs = 1 if regression else 3
    heads = [torch.nn.Linear(5, outputs).double() for _ in range(tasks)]
    steps, stop = 60, 0.6
    params, taken = fit_stacked(lambda p, f: stacked_head(p, f, prefix=""), stack_parameters(heads), x, y,
                                steps=steps, lr=0.05, regression=regression, weight_decay=0.01, stop_loss=stop)
    alone_steps = []
    for e, head in enumerate(heads):
        alone_steps.append(_fit(head, list(head.parameters()), x[e], y[e], steps=steps, lr=0.05, regression=regression,
                                weight_decay=0.01, stop_loss=stop))
        torch.testing.assert_close(params["weight"][e], head.weight.detach(), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(params["bias"][e], head.bias.detach(), rtol=1e-10, atol=1e-12)
    assert taken.tolist() == alone_steps
    assert min(alone_steps) < steps and len(set(alone_steps)) > 1, alone_steps  # stops at different steps


def test_progress_is_reported_as_episodes_are_scored():
    test = episodes("mlp", tasks=20)
    seen: list[tuple[str, int, int]] = []
    compare({"from_scratch": baseline("from_scratch", "mlp", per=4),
             "loop": baseline("from_scratch", "mlp", stacked=False)}, test,
            on_progress=lambda method, done, total: seen.append((method, done, total)))
    assert [d for m, d, t in seen if m == "from_scratch"] == [4, 8, 12, 16, 20]
    assert [d for m, d, t in seen if m == "loop"] == list(range(1, 21))
    assert {t for _, _, t in seen} == {20}


def test_the_evaluation_reports_each_tenth_of_every_methods_episodes():
    from medmeta.training.evaluate import _Tenths

    got = []
    tenths = _Tenths(got.append, "m", parts=6)
    for shots in (1, 5):
        tenths.start(shots)
        if shots == 1:
            tenths.cached("from_scratch", 600)
            tenths.cached("pretrain_finetune", 600)
        for method in ("from_scratch", "pretrain_finetune")[:0 if shots == 1 else 2] + ("meta",):
            for done in range(16, 601, 16):  # groups of 16 episodes, then the last 8
                tenths(method, done, 600)
            tenths(method, 600, 600)
    assert [(p.shots, p.method, p.cached) for p in got[:2]] == [(1, "from_scratch", True), (1, "pretrain_finetune", True)]
    meta1 = [p.done for p in got if p.shots == 1 and p.method == "meta"]
    assert len(meta1) == 10 and meta1[-1] == 600 and all(a < b for a, b in zip(meta1, meta1[1:]))
    assert [p.done * 10 // 600 for p in got if p.shots == 5 and p.method == "from_scratch"] == list(range(1, 11))
    assert [p.part for p in got if p.done == p.total] == [0, 1, 2, 3, 4, 5]
    assert got[-1].fraction == 1.0 and all(a.fraction <= b.fraction for a, b in zip(got, got[1:]))
    assert "meta at 5 shots, 600/600 episodes (100% of the evaluation" in got[-1].line()
