"""The episode sampler: stratified, disjoint support and query, pure in (seed, step), exact sampling."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from metalearn.episodes import EpisodeError
from metalearn.sampler import EpisodeSampler, distinct_positions


def _data(classes=12, per_class=(9, 30), seed=0):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(*per_class, size=classes)
    labels = np.repeat(np.arange(classes), sizes)
    labels = labels[rng.permutation(len(labels))]  # rows of a class are not contiguous
    x = torch.arange(len(labels), dtype=torch.float32)[:, None].repeat(1, 3)  # row i holds i: traceable
    return x, labels


def test_every_episode_is_stratified_and_support_query_disjoint():
    x, labels = _data()
    sampler = EpisodeSampler(x, labels, ways=5, shots=3, queries=4, tasks=8, seed=1)
    for step in range(20):
        idx = sampler.indices(step)
        batch = sampler.sample(step).check()
        assert batch.support_x.shape == (8, 15, 3) and batch.query_x.shape == (8, 20, 3)
        for t in range(8):
            assert len(set(idx.classes[t].tolist())) == 5
            support, query = idx.support[t], idx.query[t]
            assert len(set(support.tolist()) | set(query.tolist())) == 35, "K+Q distinct cases per class, disjoint"
            for label, cls in enumerate(idx.classes[t]):
                assert (labels[support[label * 3:(label + 1) * 3]] == cls).all()
                assert (labels[query[label * 4:(label + 1) * 4]] == cls).all()
            rows = batch.support_x[t, :, 0].long().numpy()
            assert (labels[rows] == idx.classes[t][batch.support_y[t].numpy()]).all(), "labels relabelled 0..N-1"
            assert batch.support_y[t].tolist() == [j for j in range(5) for _ in range(3)]


def test_sampling_is_a_pure_function_of_seed_and_step():
    x, labels = _data()
    a = EpisodeSampler(x, labels, ways=4, shots=2, queries=3, tasks=3, seed=7)
    b = EpisodeSampler(x, labels, ways=4, shots=2, queries=3, tasks=3, seed=7)
    forward = [a.indices(s).support for s in range(6)]
    backward = [b.indices(s).support for s in reversed(range(6))][::-1]
    assert all(np.array_equal(f, g) for f, g in zip(forward, backward)), "resuming at any step gives the same episodes"
    assert torch.equal(a.sample(4).query_x, b.sample(4).query_x)
    assert not np.array_equal(a.indices(0).support, a.indices(1).support)
    other = EpisodeSampler(x, labels, ways=4, shots=2, queries=3, tasks=3, seed=8)
    assert not np.array_equal(a.indices(0).support, other.indices(0).support)


def test_evaluation_episodes_are_fixed_by_seed_and_apart_from_training():
    x, labels = _data()
    a = EpisodeSampler(x, labels, ways=3, shots=1, queries=5, tasks=4, seed=3)
    first, again = a.evaluation_indices(600), EpisodeSampler(x, labels, ways=3, shots=1, queries=5, seed=3).evaluation_indices(600)
    assert first.tasks == 600 and np.array_equal(first.query, again.query)
    assert np.array_equal(a.evaluation_indices(100).support, first.support[:100]), "a prefix of the longer list"
    assert not np.array_equal(first.support[:4], a.indices(0).support)
    batches = list(a.evaluation(10, batch=4))
    assert [b.tasks for b in batches] == [4, 4, 2]
    assert torch.equal(batches[1].support_x, a.episodes(first.slice(4, 8)).support_x)


def test_grouped_binary_tasks_keep_one_group_and_label_meaning():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(4), 40)
    outcome = rng.integers(0, 2, size=len(groups))
    x = torch.arange(len(groups), dtype=torch.float32)[:, None]
    sampler = EpisodeSampler(x, outcome, ways=2, shots=4, queries=3, tasks=16, seed=0, groups=groups,
                             shuffle_labels=False)
    idx = sampler.indices(0)
    batch = sampler.sample(0)
    for t in range(16):
        rows = np.concatenate([idx.support[t], idx.query[t]])
        assert len(set(groups[rows].tolist())) == 1 and groups[rows[0]] == idx.groups[t]
        assert (outcome[idx.support[t]] == batch.support_y[t].numpy()).all(), "label 1 stays the outcome 1"
        assert Counter(batch.support_y[t].tolist()) == {0: 4, 1: 4}
    assert len(set(idx.groups.tolist())) > 1


def test_fused_inputs_are_gathered_together():
    x, labels = _data()
    fused = {"image": x[:, None, :1, None].repeat(1, 1, 2, 2), "record": x}
    batch = EpisodeSampler(fused, labels, ways=2, shots=2, queries=2, tasks=2, seed=0).sample(0).check()
    assert batch.support_x["image"].shape == (2, 4, 1, 2, 2)
    assert torch.equal(batch.support_x["image"][..., 0, 0, 0], batch.support_x["record"][..., 0])


def test_too_few_cases_is_a_clear_error():
    x, labels = _data(classes=3, per_class=(4, 5))
    with pytest.raises(EpisodeError, match=r"3 classes with at least 9 cases \(shots 4 \+ queries 5\)"):
        EpisodeSampler(x, labels, ways=3, shots=4, queries=5)
    with pytest.raises(EpisodeError, match="labels for"):
        EpisodeSampler(x, labels[:-1], ways=2, shots=1, queries=1)


@pytest.mark.parametrize("count", [5, 10_000])  # keys path (count <= m^2) and redraw path
def test_distinct_positions_is_an_exact_uniform_ordered_sample(count):
    rng = np.random.default_rng(0)
    draws = distinct_positions(rng, np.full(200_000, count), 2)
    assert (draws[:, 0] != draws[:, 1]).all() and draws.min() >= 0 and draws.max() < count
    if count == 5:
        freq = Counter(map(tuple, draws.tolist()))
        assert len(freq) == 20
        expected = len(draws) / 20
        assert max(abs(n - expected) for n in freq.values()) < 5 * expected ** 0.5  # ~5 sd
    else:
        first = np.bincount(draws[:, 0] * 10 // count, minlength=10)
        assert abs(first - len(draws) / 10).max() < 5 * (len(draws) / 10) ** 0.5
