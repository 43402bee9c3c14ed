"""Episode sampling over in-memory tensors: stratified N-way K-shot Q-query, addressable by step.

``EpisodeSampler(inputs, labels, ways=N, shots=K, queries=Q, tasks=T, seed=S)`` draws ``T``
tasks per step. Each task picks ``N`` distinct classes and, per class, ``K + Q`` distinct cases
(rows), the first ``K`` for the support set and the other ``Q`` for the query set, so support and
query never share a case. Labels are relabelled ``0..N-1`` per task; support and query are
class-major (``K`` cases of label 0, then ``K`` of label 1, ...).

Binary (or any per-group) tasks, e.g. one task per drug with classes response / no response:
pass ``groups`` (one group id per row). A task then picks one group, uniformly among the groups
with at least ``N`` classes of ``K + Q`` cases, and its classes within it; with
``shuffle_labels=False`` the episode labels keep the classes' order (label 1 = the larger label,
e.g. "response").

Purity: ``indices(step)`` and ``sample(step)`` depend on ``(seed, step)`` only (a generator made
from ``[seed, 0, step]``), so a trainer resumes exactly by asking for the next step.
``evaluation_indices(count)`` is a fixed list of ``count`` tasks from separate streams
(``[seed, 1, i]`` for task ``i``), the same for every call, each list a prefix of a longer one.

Speed: class rows are held as one sorted index array with offsets (CSR), and the ``K + Q``
distinct cases of every class of every task of a step are drawn in a few vectorised numpy calls
(``distinct_positions``); nothing loops per case or per task in Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Union

import numpy as np
import torch
from torch import Tensor

from metalearn.episodes import EpisodeError, Episodes

Inputs = Union[Tensor, dict[str, Tensor]]
TRAIN_STREAM, EVAL_STREAM = 0, 1


@dataclass(frozen=True)
class EpisodeIndices:
    """Which rows make up a batch of ``T`` tasks (no tensors gathered yet)."""

    support: np.ndarray  # [T, N*K] int64 row indices, class-major
    query: np.ndarray  # [T, N*Q] int64 row indices, class-major
    classes: np.ndarray  # [T, N] int64 sampler class ids; column j is episode label j
    groups: np.ndarray  # [T] int64 the group each task came from (0 without groups)

    @property
    def tasks(self) -> int:
        return int(self.support.shape[0])

    def slice(self, start: int, stop: int) -> "EpisodeIndices":
        return EpisodeIndices(self.support[start:stop], self.query[start:stop], self.classes[start:stop],
                              self.groups[start:stop])


def _as_tensor(x) -> Tensor:
    return x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))


def _rows(inputs: Inputs) -> int:
    if isinstance(inputs, dict):
        counts = {k: int(v.shape[0]) for k, v in inputs.items()}
        if len(set(counts.values())) != 1:
            raise EpisodeError(f"fused inputs disagree on their number of rows: {counts}")
        return next(iter(counts.values()))
    return int(inputs.shape[0])


def distinct_positions(rng: np.random.Generator, counts: np.ndarray, m: int) -> np.ndarray:
    """Per row ``i``, ``m`` distinct positions in ``0..counts[i]-1``, a uniform random ordered sample.

    Small classes (``count <= m^2``): the ``m`` smallest of ``count`` random keys (cost ``count``
    per row). Large ones: ``m`` draws with replacement, redrawing the rows that repeat a position
    (a repeat has probability below 0.4 there, so a few rounds). Both exact.
    """
    out = np.empty((len(counts), m), np.int64)
    large = counts > m * m
    small = np.flatnonzero(~large)
    if len(small):
        c = counts[small]
        keys = rng.random((len(small), int(c.max())))
        keys[np.arange(keys.shape[1])[None, :] >= c[:, None]] = np.inf
        first = np.argpartition(keys, m - 1, axis=1)[:, :m] if keys.shape[1] > m else np.arange(m)[None, :].repeat(len(small), 0)
        order = np.argsort(np.take_along_axis(keys, first, axis=1), axis=1)
        out[small] = np.take_along_axis(first, order, axis=1)
    todo = np.flatnonzero(large)
    while len(todo):
        draw = (rng.random((len(todo), m)) * counts[todo][:, None]).astype(np.int64)
        out[todo] = draw
        ordered = np.sort(draw, axis=1)
        todo = todo[(ordered[:, 1:] == ordered[:, :-1]).any(axis=1)]
    return out


class EpisodeSampler:
    """Stratified N-way K-shot Q-query tasks over ``inputs`` (a tensor or a dict of tensors)."""

    def __init__(self, inputs: Inputs, labels, *, ways: int, shots: int, queries: int, tasks: int = 1,
                 seed: int = 0, groups=None, shuffle_labels: bool = True):
        if min(ways, shots, queries, tasks) < 1:
            raise EpisodeError(f"ways, shots, queries and tasks must be at least 1, got {ways}, {shots}, {queries}, {tasks}")
        self.inputs = {k: _as_tensor(v) for k, v in inputs.items()} if isinstance(inputs, dict) else _as_tensor(inputs)
        labels = np.asarray(labels.numpy() if isinstance(labels, Tensor) else labels)
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise EpisodeError(f"labels must be a 1-d integer array, got {labels.dtype} of shape {labels.shape}")
        if len(labels) != _rows(self.inputs):
            raise EpisodeError(f"{len(labels)} labels for {_rows(self.inputs)} input rows")
        group_of_row = np.zeros(len(labels), np.int64) if groups is None else np.asarray(
            groups.numpy() if isinstance(groups, Tensor) else groups).astype(np.int64)
        if group_of_row.shape != labels.shape:
            raise EpisodeError(f"{len(group_of_row)} group ids for {len(labels)} rows")
        self.ways, self.shots, self.queries, self.tasks, self.seed = ways, shots, queries, tasks, int(seed)
        self.shuffle_labels = shuffle_labels
        self._index(labels.astype(np.int64), group_of_row)

    def _index(self, labels: np.ndarray, group_of_row: np.ndarray) -> None:
        """Classes = distinct (group, label) pairs; rows of each class contiguous in ``_order``."""
        pairs, class_of_row = np.unique(np.stack([group_of_row, labels], axis=1), axis=0, return_inverse=True)
        class_of_row = class_of_row.reshape(-1)
        self.class_group, self.class_label = pairs[:, 0], pairs[:, 1]
        self._order = np.argsort(class_of_row, kind="stable").astype(np.int64)
        counts = np.bincount(class_of_row, minlength=len(pairs)).astype(np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        self.class_counts = counts
        need = self.shots + self.queries
        usable = counts >= need
        per_group: dict[int, list[int]] = {}
        for c in np.flatnonzero(usable):
            per_group.setdefault(int(pairs[c, 0]), []).append(int(c))
        eligible = {g: cs for g, cs in per_group.items() if len(cs) >= self.ways}
        if not eligible:
            raise EpisodeError(f"no {'group has' if len(set(group_of_row.tolist())) > 1 else 'split has'} "
                               f"{self.ways} classes with at least {need} cases (shots {self.shots} + queries "
                               f"{self.queries}); class sizes: {sorted(counts.tolist(), reverse=True)}")
        width = max(len(cs) for cs in eligible.values())
        self.group_ids = np.array(sorted(eligible), np.int64)
        self._group_classes = np.full((len(eligible), width), -1, np.int64)
        for i, g in enumerate(self.group_ids):
            self._group_classes[i, :len(eligible[int(g)])] = eligible[int(g)]
        self._group_sizes = np.array([len(eligible[int(g)]) for g in self.group_ids], np.int64)

    # -- indices -----------------------------------------------------------------------------

    def _draw(self, rng: np.random.Generator, tasks: int) -> EpisodeIndices:
        n, k, q = self.ways, self.shots, self.queries
        m = k + q
        keys = rng.random((tasks, self._group_classes.shape[1]))
        if len(self.group_ids) == 1:
            pick = np.zeros(tasks, np.int64)
        else:
            pick = rng.integers(0, len(self.group_ids), size=tasks)
            keys[np.arange(keys.shape[1])[None, :] >= self._group_sizes[pick][:, None]] = np.inf
        positions = np.argsort(keys, axis=1)[:, :n]  # a random ordered subset of the group's classes
        if not self.shuffle_labels:
            positions = np.sort(positions, axis=1)
        classes = self._group_classes[pick[:, None], positions]  # [T, N]

        flat = classes.reshape(-1)
        chosen = distinct_positions(rng, self.class_counts[flat], m)  # [T*N, m], in random order
        rows = self._order[self._offsets[flat][:, None] + chosen].reshape(tasks, n, m)
        return EpisodeIndices(support=rows[:, :, :k].reshape(tasks, n * k), query=rows[:, :, k:].reshape(tasks, n * q),
                              classes=classes, groups=self.group_ids[pick])

    def indices(self, step: int) -> EpisodeIndices:
        """The rows of training step ``step``: a pure function of ``(seed, step)``."""
        return self._draw(np.random.default_rng([self.seed, TRAIN_STREAM, int(step)]), self.tasks)

    def evaluation_indices(self, count: int = 600) -> EpisodeIndices:
        """A fixed list of ``count`` tasks, by seed, from streams no training step draws from.

        Task ``i`` comes from its own stream ``[seed, 1, i]``, so the first 100 of 600 are the
        100 you get when asking for 100.
        """
        drawn = [self._draw(np.random.default_rng([self.seed, EVAL_STREAM, i]), 1) for i in range(int(count))]
        return EpisodeIndices(*(np.concatenate([getattr(d, f) for d in drawn]) for f in
                                ("support", "query", "classes", "groups")))

    # -- tensors -----------------------------------------------------------------------------

    def episodes(self, idx: EpisodeIndices) -> Episodes:
        """Gather the tensors of ``idx`` into an ``Episodes`` batch."""
        t, n = idx.classes.shape
        support, query = torch.from_numpy(idx.support), torch.from_numpy(idx.query)

        def gather(rows: Tensor):
            take = lambda x: x[rows.reshape(-1)].reshape(*rows.shape, *x.shape[1:])  # noqa: E731
            return {k: take(v) for k, v in self.inputs.items()} if isinstance(self.inputs, dict) else take(self.inputs)

        label = torch.arange(n, dtype=torch.int64)
        return Episodes(support_x=gather(support), support_y=label.repeat_interleave(self.shots).expand(t, -1).clone(),
                        query_x=gather(query), query_y=label.repeat_interleave(self.queries).expand(t, -1).clone(),
                        n_way=n)

    def sample(self, step: int) -> Episodes:
        """The episodes of training step ``step`` (``tasks`` of them)."""
        return self.episodes(self.indices(step))

    def evaluation(self, count: int = 600, batch: int | None = None) -> Iterator[Episodes]:
        """The fixed evaluation tasks as batches of at most ``batch`` (default: ``tasks``)."""
        idx = self.evaluation_indices(count)
        size = batch or self.tasks
        for start in range(0, idx.tasks, size):
            yield self.episodes(idx.slice(start, start + size))
