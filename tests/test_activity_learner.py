"""metalearn.activity.ActivityGP (issue 15 item 4): it learns what the training tasks share, deterministically,
resumably, and its fast path agrees with a plain float64 computation.

The generated problem where the answer is known: every compound has two fingerprint blocks, an informative one
(64 bits) and a noise block (256 bits: a few series of near-identical
structures that have nothing to do with activity). A task's activity is the number of a few task-specific bits
of the informative block that the compound carries (plus a little noise); labels = at or above the task's median.
Kernels on both blocks with equal weights (the untrained learner) are swamped by the noise block; the meta-learned
block weights should find the informative block on the training tasks and rank the unseen tasks' compounds better.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from metalearn.activity import ActivityGP, gp_posterior_mean, tanimoto

INFORMATIVE, NOISE = 64, 256


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny matrices: one thread is faster than two fighting a loaded machine (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _task(rng: np.random.Generator, n: int = 120) -> tuple[torch.Tensor, torch.Tensor]:
    informative = (rng.random((n, INFORMATIVE)) < 0.15).astype(np.float32)
    # the noise block is structured: 6 chemical "series" unrelated to activity, each a prototype with bit flips
    prototypes = rng.random((6, NOISE)) < 0.3
    flips = rng.random((n, NOISE)) < 0.05
    noise = (prototypes[rng.integers(0, 6, n)] ^ flips).astype(np.float32)
    relevant = rng.choice(INFORMATIVE, 4, replace=False)
    p_activity = informative[:, relevant].sum(1) + 0.3 * rng.standard_normal(n)
    return torch.as_tensor(np.concatenate([informative, noise], 1)), torch.as_tensor(p_activity)


def _tasks(seed: int, n_tasks: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    rng = np.random.default_rng(seed)
    return [_task(rng) for _ in range(n_tasks)]


def _delta_ap(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision (ties broken by order, as sklearn does not need to be installed) minus the base rate."""
    order = np.argsort(-scores, kind="stable")
    hits = labels[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / hits.sum() - labels.mean())


def _evaluate(learner: ActivityGP, tasks, support: int = 16, draws: int = 5) -> float:
    rng = np.random.default_rng(123)
    values = []
    for x, p in tasks:
        labels = (p.numpy() >= np.median(p.numpy())).astype(np.int64)
        for _ in range(draws):
            pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
            s = np.concatenate([rng.choice(pos, support // 2, replace=False), rng.choice(neg, support // 2,
                                                                                        replace=False)])
            q = np.setdiff1d(np.arange(len(labels)), s)
            scores = learner.scores(x[s], torch.as_tensor(labels[s]), x[q]).numpy()
            values.append(_delta_ap(labels[q], scores))
    return float(np.mean(values))


def _learner(seed: int = 0) -> ActivityGP:
    return ActivityGP(INFORMATIVE + NOISE, blocks=[INFORMATIVE, NOISE], episodes_per_step=4, query_size=64,
                      lr=0.1, seed=seed)


def test_meta_training_finds_the_informative_block_and_beats_the_untrained_learner():
    train, test = _tasks(0, 8), _tasks(1, 6)
    untrained = _learner()
    before = _evaluate(untrained, test)
    trained = _learner()
    trained.meta_train(train, steps=30)
    after = _evaluate(trained, test)
    weights = trained.log_w_tanimoto.exp().detach()
    assert weights[0] > 3 * weights[1], weights  # the informative block's kernel carries the weight
    assert after > before + 0.05, (before, after)


def test_meta_training_is_deterministic_by_seed():
    train = _tasks(0, 4)
    a, b, c = _learner(seed=3), _learner(seed=3), _learner(seed=4)
    losses_a, losses_b = a.meta_train(train, steps=6), b.meta_train(train, steps=6)
    losses_c = c.meta_train(train, steps=6)
    assert losses_a == losses_b
    assert losses_a != losses_c
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key


def test_state_round_trip_through_safetensors_resumes_the_same_training_and_scores(tmp_path):
    train = _tasks(0, 4)
    straight = _learner()
    straight.meta_train(train, steps=8)
    first = _learner()
    first.meta_train(train, steps=4)
    save_file(first.state_dict(), tmp_path / "w.safetensors")
    resumed = _learner()
    resumed.load_state_dict(load_file(tmp_path / "w.safetensors"))
    assert int(resumed.step) == 4
    resumed.meta_train(train, steps=4)
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    x, p = train[0]
    y = (p >= p.median()).long()
    assert torch.equal(straight.scores(x[:16], y[:16], x[16:]), resumed.scores(x[:16], y[:16], x[16:]))


def test_fast_path_agrees_with_a_plain_float64_computation():
    rng = np.random.default_rng(5)
    a = (rng.random((12, 40)) < 0.3).astype(np.float64)
    b = (rng.random((7, 40)) < 0.3).astype(np.float64)
    plain = np.array([[np.logical_and(u, v).sum() / max(np.logical_or(u, v).sum(), 1) for v in b] for u in a])
    fast = tanimoto(torch.as_tensor(a), torch.as_tensor(b)).numpy()
    np.testing.assert_allclose(fast, plain, rtol=0, atol=1e-12)

    k_ss = tanimoto(torch.as_tensor(a), torch.as_tensor(a))
    k_qs = tanimoto(torch.as_tensor(b), torch.as_tensor(a))
    residual = torch.as_tensor(rng.choice([-1.0, 1.0], 12))
    noise = torch.tensor(0.4, dtype=torch.float64)
    plain_mean = k_qs @ torch.linalg.solve(k_ss + noise * torch.eye(12, dtype=torch.float64), residual)
    torch.testing.assert_close(gp_posterior_mean(k_ss, k_qs, residual, noise), plain_mean, rtol=1e-10, atol=1e-10)


def test_bad_shapes_are_refused():
    learner = _learner()
    with pytest.raises(ValueError):
        learner.scores(torch.zeros(4, 10), torch.zeros(4), torch.zeros(3, 10))
    with pytest.raises(ValueError):
        ActivityGP(10, blocks=[4, 4])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_scores_on_cuda_match_the_cpu():
    train = _tasks(0, 3)
    cpu = _learner()
    cpu.meta_train(train, steps=3)
    gpu = _learner(seed=0)
    gpu.load_state_dict(cpu.state_dict())
    gpu.to("cuda")
    x, p = train[0]
    y = (p >= p.median()).long()
    torch.testing.assert_close(gpu.scores(x[:16], y[:16], x[16:]).cpu(), cpu.scores(x[:16], y[:16], x[16:]),
                               rtol=1e-4, atol=1e-4)
