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

Purity: ``indices(step)`` and ``sample(step)`` depend on ``(seed, step)`` only (the random
stream ``PCG64(SeedSequence(seed)).jumped(2 * step)``), so a trainer resumes exactly by asking for
the next step. ``evaluation_indices(count)`` is a fixed list of ``count`` tasks from separate
streams (``jumped(2 * i + 1)`` for task ``i``), the same for every call, each list a prefix of a
longer one.

Speed: class rows are held as one sorted index array with offsets (CSR); a step takes all its
random numbers in one call, picks classes and, for every class of every task, ``K + Q`` distinct
cases in a fixed number of vectorised numpy calls whatever the class sizes (``_Cases``); nothing
loops per case, per class or per task in Python.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Iterator, Union

import numpy as np
import torch
from torch import Tensor

from metalearn.episodes import EpisodeError, Episodes

Inputs = Union[Tensor, dict[str, Tensor]]
TRAIN_STREAM, EVAL_STREAM = 0, 1
# Which episodes a (seed, step) gives: raise it whenever a change draws other episodes, so
# stored evaluations and checkpoints of an older scheme are not taken for this one's.
SCHEME = 2
JUMP = 0x9E3779B97F4A7C15F39CC0605CEDC835  # PCG64.jumped's jump, (golden ratio - 1) * 2^128
INVALID = 1 << 62  # a sort key above every valid one (those stay below 2^62), its column bits 0


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


class _SortKeys:
    """Random int64 sort keys over ``width`` columns: random high bits from raw 64-bit words, the
    column in the low bits, below ``2^62``. Sorting them sorts random numbers (equal random bits,
    probability about ``2^-56`` a pair, fall back on the column) and ``& low`` then reads off the
    column: an argsort at the cost of a sort (numpy sorts int64 rows several times faster)."""

    def __init__(self, width: int):
        bits = max(1, (width - 1).bit_length())
        self.width, self.low, self.keep = width, np.int64((1 << bits) - 1), np.int64((1 << 62) - (1 << bits))
        self.columns = np.arange(width, dtype=np.int64)

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        keys = raw.view(np.int64).reshape(-1, self.width) & self.keep
        keys |= self.columns
        return keys


class _Cases:
    """Draws, per chosen class, ``m`` distinct case positions (a uniform random ordered sample), exactly.

    Per class and draw, ``W`` candidates: the positions ``0..c-1`` of a class of ``c <= W`` cases
    (then ``c-1`` repeated), or ``W`` draws with replacement from ``0..c-1`` for a larger one
    (``floor(x * c / 2^53)`` of 53 random bits ``x``, as numpy's own doubles). Sorted, each run of
    equal candidates counts once; the ``m`` distinct candidates with the smallest random keys, in
    key order, are the sample. Small classes: the ``m`` smallest of ``c`` keys, a uniform ordered
    sample. Large ones: the distinct draws are a uniformly random set given their number (every
    position plays the same role), so ``m`` of them in random order are too. A draw with fewer than
    ``m`` distinct candidates is redrawn whole, which keeps it exact. ``W = 2m`` (fewer than 1% of
    draws redrawn at ``c = W + 1``, for ``m = 20``, vanishing as ``c`` grows); ``W = m + 4`` when
    every class has at least ``m^2`` cases (below 0.1% there). Two sorts of ``W`` numbers and a
    dozen vectorised calls for all the classes of a step, whatever their sizes; no Python loop.
    """

    def __init__(self, counts: np.ndarray, m: int, drawn=None, offsets=None):
        """``counts``: cases per class; ``drawn``: the classes ever drawn (default: all);
        ``offsets``: added to each class's positions (default: 0)."""
        counts = np.asarray(counts, np.int64)
        drawn = np.arange(len(counts)) if drawn is None else drawn
        self.m = m
        width = m + 4 if m > 4 and counts[drawn].min() >= m * m else 2 * m  # m + 4 < 2m < m^2: all large
        self.width, self.keys = width, _SortKeys(width)
        large = counts > width
        self.scale = (np.where(large, counts, 0) * 2.0 ** -53)[:, None]  # [classes, 1]
        offsets = np.zeros(len(counts), np.int64) if offsets is None else np.asarray(offsets, np.int64)
        if large[drawn].all():
            self.base = None if not offsets.any() else offsets[:, None]
        else:
            small = np.minimum(self.keys.columns, np.maximum(counts, 1)[:, None] - 1)
            self.base = np.where(large[:, None], 0, small) + offsets[:, None]  # [classes, W]

    def draw(self, rng: np.random.Generator, raw: np.ndarray, keys: np.ndarray, classes: np.ndarray,
             rowbase: np.ndarray) -> np.ndarray:
        """``[rows, m]`` positions of ``classes`` from ``raw`` (``rows * W`` random 64-bit words) and
        ``keys`` (``self.keys`` of as many more); ``rowbase``: ``W * arange(rows)[:, None]``; ``rng``
        only for the rare redraws."""
        cand = ((raw.reshape(len(classes), self.width) >> np.uint64(11)) * self.scale[classes]).astype(np.int64)
        if self.base is not None:
            cand += self.base[classes]
        cand.sort(axis=1)
        np.copyto(keys[:, 1:], INVALID, where=cand[:, 1:] == cand[:, :-1])  # a repeat is no new candidate
        keys.sort(axis=1)
        pick = keys[:, :self.m] & self.keys.low
        pick += rowbase  # flat indices into cand
        out = cand.ravel()[pick]
        if max(keys[:, self.m - 1].tolist()) >= INVALID:  # rows with fewer than m distinct candidates
            short = np.flatnonzero(keys[:, self.m - 1] >= INVALID)
            out[short] = self.redraw(rng, classes[short])
        return out

    def redraw(self, rng: np.random.Generator, classes: np.ndarray) -> np.ndarray:
        """``draw`` with fresh random words from ``rng``."""
        rows = len(classes)
        raw = rng.bit_generator.random_raw(2 * rows * self.width)
        return self.draw(rng, raw[:rows * self.width], self.keys(raw[rows * self.width:]), classes,
                         np.arange(rows)[:, None] * self.width)


def distinct_positions(rng: np.random.Generator, counts, m: int) -> np.ndarray:
    """Per row ``i``, ``m`` distinct positions in ``0..counts[i]-1``, a uniform random ordered sample."""
    counts = np.asarray(counts, np.int64)
    if not len(counts):
        return np.empty((0, m), np.int64)
    if counts.min() < m:
        raise ValueError(f"cannot draw {m} distinct positions from {counts.min()} cases")
    return _Cases(counts, m).redraw(rng, np.arange(len(counts)))


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
        self._local = threading.local()
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
        self._class_keys = _SortKeys(width)
        self._cases = _Cases(counts, need, drawn=self._group_classes[self._group_classes >= 0], offsets=self._offsets)
        self._layouts: dict[int, tuple] = {}

    # -- indices -----------------------------------------------------------------------------

    def _rng(self, stream: int, index: int) -> np.random.Generator:
        """The generator of ``(seed, stream, index)``: PCG64 from the seed, jumped ``2 * index + stream`` times.

        The same as ``PCG64(SeedSequence(seed)).jumped(2 * index + stream)`` (numpy's jump of
        ``0.618 * 2^128`` draws: the first ``2^40`` streams stay more than ``2^80`` draws apart, a
        step uses a few thousand), at the cost of setting a state and one ``advance`` (about 2 us,
        against 7 for a seeded ``default_rng``). One bit generator per thread.
        """
        if index < 0:
            raise ValueError(f"step and episode numbers are non-negative, got {index}")
        local = self._local
        if not hasattr(local, "start"):
            local.bits = np.random.PCG64(np.random.SeedSequence(self.seed))
            local.generator = np.random.Generator(local.bits)
            local.start = local.bits.state
        local.bits.state = local.start
        local.bits.advance((2 * index + stream) * JUMP)
        return local.generator

    def _layout(self, tasks: int) -> tuple:
        """For a draw of ``tasks`` tasks: how many random words make sort keys, the masks and
        columns that make them (class keys, then case keys), and each case row's flat offset."""
        if tasks not in self._layouts:
            ck, cases = self._class_keys, self._cases
            rows = tasks * self.ways
            keep = np.concatenate([np.full(tasks * ck.width, ck.keep), np.full(rows * cases.width, cases.keys.keep)])
            columns = np.concatenate([np.tile(ck.columns, tasks), np.tile(cases.keys.columns, rows)])
            self._layouts[tasks] = (len(keep), keep, columns, np.arange(rows)[:, None] * cases.width)
        return self._layouts[tasks]

    def _draw(self, rng: np.random.Generator, tasks: int) -> EpisodeIndices:
        n, k = self.ways, self.shots
        rows, width = tasks * n, self._group_classes.shape[1]
        nkeys, keep, columns, rowbase = self._layout(tasks)
        single = len(self.group_ids) == 1
        raw = rng.bit_generator.random_raw(nkeys + rows * self._cases.width + (0 if single else tasks))
        keys = raw[:nkeys].view(np.int64) & keep  # sort keys: random high bits, the column in the low ones
        keys |= columns
        class_keys = keys[:tasks * width].reshape(tasks, width)
        if single:
            pick = np.zeros(tasks, np.int64)
        else:
            pick = ((raw[-tasks:] >> np.uint64(11)) * (len(self.group_ids) * 2.0 ** -53)).astype(np.int64)
            class_keys[self._class_keys.columns >= self._group_sizes[pick][:, None]] = INVALID
        class_keys.sort(axis=1)
        positions = class_keys[:, :n] & self._class_keys.low  # a random ordered subset of the group's classes
        if not self.shuffle_labels:
            positions.sort(axis=1)
        classes = self._group_classes[0][positions] if single else self._group_classes[pick[:, None], positions]

        flat = classes.reshape(-1)
        chosen = self._cases.draw(rng, raw[nkeys:nkeys + rows * self._cases.width],
                                  keys[tasks * width:].reshape(rows, -1), flat, rowbase)  # [T*N, K+Q] into _order
        return EpisodeIndices(support=self._order[chosen[:, :k]].reshape(tasks, -1),
                              query=self._order[chosen[:, k:]].reshape(tasks, -1), classes=classes,
                              groups=self.group_ids[pick])

    def indices(self, step: int) -> EpisodeIndices:
        """The rows of training step ``step``: a pure function of ``(seed, step)``."""
        return self._draw(self._rng(TRAIN_STREAM, int(step)), self.tasks)

    def evaluation_indices(self, count: int = 600) -> EpisodeIndices:
        """A fixed list of ``count`` tasks, by seed, from streams no training step draws from.

        Task ``i`` comes from its own stream ``(seed, 1, i)``, so the first 100 of 600 are the
        100 you get when asking for 100.
        """
        drawn = [self._draw(self._rng(EVAL_STREAM, i), 1) for i in range(int(count))]
        return EpisodeIndices(*(np.concatenate([getattr(d, f) for d in drawn]) for f in
                                ("support", "query", "classes", "groups")))

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["_local"]  # the per-thread generators: rebuilt on first use
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

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
