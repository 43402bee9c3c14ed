"""The FS-Mol few-shot protocol (Stanley et al. 2021) as issue 15 states it, one small function each.

- A task is one activity table of one target and activity type (``CHEMBL237_Ki``); its group is the
  ChEMBL target id (``CHEMBL237``). A split puts every task of a group on one side, so Ki and EC50 of
  one target are never on both.
- Label: active (1) when the task's pActivity is at or above the task's median.
- A draw: a support set of S/2 actives + S/2 inactives taken without replacement by a numpy Generator
  seeded from (split seed, task, S, draw) (``draw_rng``), so every method sees the same draw; the query
  is every other compound of the task.
- Metric: dAUPRC = average precision of the query's scores - fraction of positives in the query.
- A unit = (test task, split seed); its dAUPRC is the mean over its draws. Methods are summarised by
  mean and 95% t-interval over units (``mean_ci``) and compared per unit (``paired``).

Numbers used by the benchmark: 20 meta-train / 10 meta-test tasks, split seeds 0, 1, 2, S in
(16, 32, 64), 10 draws per test task: 30 units.
"""

from __future__ import annotations

import re
import zlib
from typing import Sequence

import numpy as np

SPLIT_SEEDS = (0, 1, 2)
SUPPORT_SIZES = (16, 32, 64)
N_DRAWS = 10
N_TEST = 10

_TASK = re.compile(r"^(?P<group>[A-Za-z0-9.\-]+)_(?P<kind>[A-Za-z0-9.\-]+)$")


def group_of(task: str) -> str:
    """The grouping key of a task name ``<target>_<activity type>``: the target (``CHEMBL237_Ki`` ->
    ``CHEMBL237``). A name without exactly one ``_`` separating two non-empty parts: ``ValueError``."""
    match = _TASK.match(task)
    if match is None:
        raise ValueError(f"a task name is <target>_<activity type>, e.g. CHEMBL237_Ki; got {task!r}")
    return match["group"]


def labels_of(p_activity: np.ndarray) -> np.ndarray:
    """Binary labels of one task: 1 where pActivity >= the task's median, else 0 (``int64``)."""
    p = np.asarray(p_activity, dtype=np.float64)
    return (p >= np.median(p)).astype(np.int64)


def split_tasks(tasks: Sequence[str], seed: int, n_test: int = N_TEST, n_val: int = 0,
                groups_of: dict[str, str] | None = None) -> dict[str, list[str]]:
    """Split task names into ``{"train", "val", "test"}`` (each sorted) by group, deterministically.

    A task's group is ``groups_of[task]`` when given (a task set's target column), else ``group_of(task)``.

    The groups (sorted, so the input order does not matter) are shuffled by ``default_rng(seed)``; in
    that order a group goes to test while its tasks fit in the ``n_test`` still open, then to val
    likewise (``n_val``), else to train. Test and val therefore hold exactly ``n_test`` / ``n_val``
    tasks whenever single-task groups allow it, and never part of a group. ``ValueError`` when the
    tasks cannot fill test and val and leave a training task.
    """
    tasks = sorted(set(tasks))
    groups: dict[str, list[str]] = {}
    for task in tasks:
        groups.setdefault(groups_of[task] if groups_of is not None else group_of(task), []).append(task)
    order = sorted(groups)
    rng = np.random.default_rng(seed)
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for i in rng.permutation(len(order)):
        members = groups[order[i]]
        if len(out["test"]) + len(members) <= n_test:
            out["test"] += members
        elif len(out["val"]) + len(members) <= n_val:
            out["val"] += members
        else:
            out["train"] += members
    if len(out["test"]) != n_test or len(out["val"]) != n_val or not out["train"]:
        raise ValueError(f"{len(tasks)} tasks in {len(groups)} groups cannot make {n_test} test and {n_val} "
                         f"validation tasks by group and leave a training task")
    return {k: sorted(v) for k, v in out.items()}


def draw_rng(split_seed: int, task: str, support_size: int, draw: int) -> np.random.Generator:
    """The Generator of one draw, from (split seed, task, S, draw) only (the task name through CRC-32,
    stable across processes and Python versions): every method given those gets the same draw."""
    return np.random.default_rng([split_seed, zlib.crc32(task.encode()), support_size, draw])


def draw(labels: np.ndarray, support_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One few-shot draw: ``support_size / 2`` actives and as many inactives without replacement
    (support indices sorted), the query every other index (sorted). ``ValueError`` when the size is
    odd or a class has fewer than ``support_size / 2`` members or none would be left for the query."""
    labels = np.asarray(labels)
    if support_size <= 0 or support_size % 2:
        raise ValueError(f"the support size must be a positive even number, got {support_size}")
    half = support_size // 2
    positives, negatives = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    if len(positives) < half or len(negatives) < half or len(labels) <= support_size:
        raise ValueError(f"a support of {half} + {half} needs more compounds of each class than the task's "
                         f"{len(positives)} actives and {len(negatives)} inactives")
    support = np.sort(np.concatenate([rng.choice(positives, half, replace=False),
                                      rng.choice(negatives, half, replace=False)]))
    query = np.setdiff1d(np.arange(len(labels)), support, assume_unique=True)
    return support, query


def delta_auprc(y: np.ndarray, scores: np.ndarray) -> float:
    """Average precision of ``scores`` for binary ``y`` (scikit-learn's, ties counted together) minus
    the fraction of positives: 1 - that fraction for a perfect ranking, 0 for a constant score.
    ``ValueError`` when ``y`` has no positive."""
    from sklearn.metrics import average_precision_score

    y = np.asarray(y)
    if not (y == 1).any():
        raise ValueError("dAUPRC needs at least one positive in the query")
    return float(average_precision_score(y, np.asarray(scores, dtype=np.float64)) - (y == 1).mean())


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of its ``level`` Student-t interval (n - 1 degrees of freedom); the
    half-width is NaN for fewer than two values."""
    from scipy.stats import t

    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return float(v.mean()) if len(v) else float("nan"), float("nan")
    half = t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return float(v.mean()), float(half)


def paired(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """The paired difference of two methods measured on the same units (same order): mean and
    interval half-width of ``a - b`` per unit."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired needs the same units for both methods, got {a.shape} and {b.shape}")
    return mean_ci(a - b, level)
