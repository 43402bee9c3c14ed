"""The FS-Mol protocol functions: group split of the 30 real MoleculeACE task names, draws, dAUPRC
and the intervals."""

from __future__ import annotations

import numpy as np
import pytest

from medmeta.chem.protocol import (delta_auprc, draw, draw_rng, group_of, labels_of, mean_ci, paired,
                                   split_tasks)

pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def task_names() -> list[str]:
    from medmeta.chem.moleculeace import table_names
    from medmeta.errors import MedmetaError

    try:
        return table_names()
    except MedmetaError as e:
        pytest.skip(f"the MoleculeACE tables are not available: {e}")


def test_group_of_is_the_target():
    assert group_of("CHEMBL237_Ki") == group_of("CHEMBL237_EC50") == "CHEMBL237"
    for bad in ("CHEMBL237", "CHEMBL237_", "_Ki", "a_b_c"):
        with pytest.raises(ValueError):
            group_of(bad)


def test_labels_are_at_or_above_the_median():
    assert labels_of(np.array([5.0, 6.0, 7.0, 8.0, 6.5])).tolist() == [0, 0, 1, 1, 1]


def test_split_keeps_each_target_on_one_side_with_20_train_10_test(task_names):
    assert len(task_names) == 30 and {"CHEMBL237_Ki", "CHEMBL237_EC50"} <= set(task_names)
    tests = []
    for seed in (0, 1, 2, 3, 4, 5, 6, 7):
        split = split_tasks(task_names, seed)
        assert len(split["test"]) == 10 and len(split["train"]) == 20 and split["val"] == []
        assert sorted(split["train"] + split["test"]) == sorted(task_names)
        assert not {group_of(t) for t in split["train"]} & {group_of(t) for t in split["test"]}
        assert split == split_tasks(list(reversed(task_names)), seed)  # deterministic, order-free
        tests.append(tuple(split["test"]))
    assert len(set(tests)) == len(tests)  # seeds give different splits
    assert any("CHEMBL237_Ki" in t for t in tests)  # the two-task target does go to test sometimes


def test_split_with_validation_and_a_refusal(task_names):
    split = split_tasks(task_names, 0, n_test=10, n_val=5)
    assert (len(split["train"]), len(split["val"]), len(split["test"])) == (15, 5, 10)
    sides = [{group_of(t) for t in split[k]} for k in ("train", "val", "test")]
    assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
    with pytest.raises(ValueError, match="cannot make"):
        split_tasks(["A_Ki", "A_EC50", "B_Ki"], 0, n_test=3)  # nothing left to train on


def test_a_draw_has_half_of_each_class_and_the_query_is_the_rest():
    labels = np.array([1, 0] * 30 + [0] * 11)
    for size in (16, 32):
        support, query = draw(labels, size, draw_rng(0, "CHEMBL237_Ki", size, 3))
        assert (labels[support] == 1).sum() == (labels[support] == 0).sum() == size // 2
        assert len(set(support)) == size and sorted([*support, *query]) == list(range(len(labels)))
    with pytest.raises(ValueError):
        draw(labels, 64, np.random.default_rng(0))  # 30 actives cannot give 32
    with pytest.raises(ValueError):
        draw(labels, 15, np.random.default_rng(0))


def test_a_draw_depends_only_on_split_seed_task_size_and_draw():
    labels = np.array([1] * 40 + [0] * 40)
    once = draw(labels, 16, draw_rng(1, "CHEMBL2034_Ki", 16, 7))[0]
    assert np.array_equal(once, draw(labels, 16, draw_rng(1, "CHEMBL2034_Ki", 16, 7))[0])
    others = [draw(labels, 16, draw_rng(*key))[0] for key in
              ((2, "CHEMBL2034_Ki", 16, 7), (1, "CHEMBL204_Ki", 16, 7), (1, "CHEMBL2034_Ki", 16, 8))]
    assert all(not np.array_equal(once, other) for other in others)


def test_delta_auprc_of_perfect_constant_and_reversed_rankings():
    y = np.array([1, 0, 0, 1, 0, 0, 0, 0])
    assert delta_auprc(y, y * 2.0) == pytest.approx(1 - 0.25)
    assert delta_auprc(y, np.zeros(8)) == pytest.approx(0.0)
    assert delta_auprc(y, 1 - y + 0.01 * np.arange(8)) < 0  # positives ranked last
    with pytest.raises(ValueError):
        delta_auprc(np.zeros(4), np.arange(4.0))


def test_mean_ci_is_the_student_t_interval_and_paired_the_per_unit_difference():
    mean, half = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.302653 / np.sqrt(3), rel=1e-5)
    assert np.isnan(mean_ci([1.0])[1])
    a, b = [0.3, 0.5, 0.4, 0.6], [0.2, 0.4, 0.3, 0.5]
    assert paired(a, b) == pytest.approx((0.1, 0.0), abs=1e-12)  # a constant difference: no spread
    with pytest.raises(ValueError):
        paired([1.0], [1.0, 2.0])
