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


# m = 2: 2m = 4 candidates; 3 and 4 cases: the class's own positions; 5: 4 draws with replacement,
# fewer than 2 distinct ones (so redrawn) 0.8% of the time; 10,000: draws that almost never repeat
@pytest.mark.parametrize("count", [2, 3, 4, 5, 10_000])
def test_distinct_positions_is_an_exact_uniform_ordered_sample(count):
    rng = np.random.default_rng(0)
    draws = distinct_positions(rng, np.full(200_000, count), 2)
    assert (draws[:, 0] != draws[:, 1]).all() and draws.min() >= 0 and draws.max() < count
    if count <= 5:
        freq = Counter(map(tuple, draws.tolist()))
        pairs = count * (count - 1)
        assert len(freq) == pairs
        expected = len(draws) / pairs
        assert max(abs(n - expected) for n in freq.values()) < 5 * expected ** 0.5  # ~5 sd
    else:
        first = np.bincount(draws[:, 0] * 10 // count, minlength=10)
        assert abs(first - len(draws) / 10).max() < 5 * (len(draws) / 10) ** 0.5


def _uniform(values, n: int, what: str) -> None:
    """``values`` (ints in ``0..n-1``) look uniform: every count within ~5 sd of its expectation."""
    counts = np.bincount(np.asarray(values).reshape(-1), minlength=n)
    expected = counts.sum() / n
    assert len(counts) == n and np.abs(counts - expected).max() < 5 * expected ** 0.5, f"{what}: {counts}"


def test_a_class_of_exactly_k_plus_q_cases_and_one_of_20000_are_both_sampled_exactly():
    """Tiny and huge classes side by side (the skewed layout): every case of the tiny class in a
    uniformly random order, distinct cases of the huge one spread over all of it."""
    # m = 8 (shots 3 + queries 5), 2m = 16 candidates: classes of 8, 9 and 16 cases give their own positions,
    # 17 draws with replacement often redrawn, 300 and 20,000 draws that seldom or never repeat
    sizes = {0: 8, 1: 20_000, 2: 9, 3: 17, 4: 16, 5: 300}
    labels = np.repeat(np.array(list(sizes)), list(sizes.values()))
    labels = labels[np.random.default_rng(1).permutation(len(labels))]
    x = torch.arange(len(labels))[:, None]
    sampler = EpisodeSampler(x, labels, ways=6, shots=3, queries=5, tasks=50, seed=2)
    first_of_tiny, huge = [], []
    for step in range(60):
        idx = sampler.indices(step)
        for t in range(50):
            for label, cls in enumerate(idx.classes[t]):
                rows = np.concatenate([idx.support[t, label * 3:(label + 1) * 3],
                                       idx.query[t, label * 5:(label + 1) * 5]])
                assert (labels[rows] == cls).all() and len(set(rows.tolist())) == 8
                if cls == 0:
                    assert set(rows.tolist()) == set(np.flatnonzero(labels == 0).tolist()), "all 8 cases"
                    first_of_tiny.append(int(np.flatnonzero(np.flatnonzero(labels == 0) == rows[0])[0]))
                if cls == 1:
                    huge.extend(np.searchsorted(np.flatnonzero(labels == 1), rows).tolist())
    assert len(first_of_tiny) == 3000
    _uniform(first_of_tiny, 8, "which of its 8 cases comes first")
    _uniform(np.asarray(huge) * 20 // 20_000, 20, "where in the 20,000-case class")


def test_classes_all_of_at_least_m_squared_cases_take_the_narrow_draw():
    labels = np.repeat(np.arange(7), [100, 101, 150, 400, 1000, 100, 120])  # m = 10: every class >= m^2
    x = torch.arange(len(labels))[:, None]
    sampler = EpisodeSampler(x, labels, ways=3, shots=4, queries=6, tasks=64, seed=0)
    assert sampler._cases.width == 14 and sampler._cases.base is not None  # m + 4 candidates, class offsets
    positions = []
    for step in range(30):
        idx = sampler.indices(step)
        both = np.concatenate([idx.support.reshape(64, 3, 4), idx.query.reshape(64, 3, 6)], axis=2)
        assert (labels[both] == idx.classes[:, :, None]).all()
        assert all(len(set(rows.tolist())) == 10 for rows in both.reshape(-1, 10))
        first = both[:, :, 0][idx.classes == 0]
        positions.extend(first.tolist())  # class 0 holds rows 0..99
    _uniform(positions, 100, "first case drawn from a class of 100")


def test_two_instances_threads_and_a_pickled_copy_draw_the_same_episodes():
    import pickle
    from concurrent.futures import ThreadPoolExecutor

    x, labels = _data()
    make = lambda: EpisodeSampler(x, labels, ways=4, shots=2, queries=3, tasks=5, seed=11)  # noqa: E731
    a, b = make(), make()
    expected = [a.indices(s) for s in range(40)]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(b.indices, range(40)))
    copy = pickle.loads(pickle.dumps(a))
    for step, want in enumerate(expected):
        for got in (threaded[step], copy.indices(step), b.indices(step)):
            assert all(np.array_equal(getattr(want, f), getattr(got, f))
                       for f in ("support", "query", "classes", "groups"))
    assert np.array_equal(copy.evaluation_indices(20).query, a.evaluation_indices(20).query)


def test_streams_are_pcg64_jumps_of_the_seed():
    """Step ``s`` draws from ``PCG64(SeedSequence(seed)).jumped(2s)``, evaluation task ``i`` from
    ``jumped(2i + 1)``: documented, independent streams that never overlap."""
    x, labels = _data()
    sampler = EpisodeSampler(x, labels, ways=2, shots=1, queries=1, seed=5)
    for stream, index in [(0, 0), (0, 7), (1, 3), (0, 10 ** 12)]:
        want = np.random.PCG64(np.random.SeedSequence(5)).jumped(2 * index + stream).random_raw(8)
        assert np.array_equal(sampler._rng(stream, index).bit_generator.random_raw(8), want)
    with pytest.raises(ValueError, match="non-negative"):
        sampler.indices(-1)
