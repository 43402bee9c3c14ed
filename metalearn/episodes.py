"""Episodes: the one convention for a few-shot task as it moves through metalearn.

A batch of ``T`` tasks is stacked along the first dimension:

- ``support_x``: ``[T, S, *features]`` float (images ``[T, S, C, H, W]``, records ``[T, S, F]``)
- ``support_y``: ``[T, S]`` int64 labels in ``0..n_way-1`` (classification) or float targets
  (regression, ``n_way is None``)
- ``query_x``: ``[T, Q, *features]``, ``query_y``: ``[T, Q]`` likewise.

A fused image+record input is a ``dict`` ``{"image": [T, S, C, H, W], "record": [T, S, F]}``
in place of a tensor; every function here treats a dict of tensors like one tensor.

``Episodes.check()`` refuses bad input with an ``EpisodeError`` naming the problem (mismatched
shapes, labels outside ``0..n_way-1``, empty support sets, NaN or inf inputs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch
from torch import Tensor

Inputs = Union[Tensor, dict[str, Tensor]]


class EpisodeError(ValueError):
    """An episode that cannot be learned from; the message names the problem."""


class DivergenceError(RuntimeError):
    """The loss became NaN or inf; training stops before anything is written."""


def _map(inputs: Inputs, fn) -> Inputs:
    return {k: fn(v) for k, v in inputs.items()} if isinstance(inputs, dict) else fn(inputs)


def _leading(inputs: Inputs) -> tuple[int, ...]:
    """The (T, S) of an input, checked to agree across the parts of a fused input."""
    if isinstance(inputs, dict):
        shapes = {k: tuple(v.shape[:2]) for k, v in inputs.items()}
        if len(set(shapes.values())) != 1:
            raise EpisodeError(f"fused inputs disagree on their task and case counts: {shapes}")
        return next(iter(shapes.values()))
    return tuple(inputs.shape[:2])


@dataclass(frozen=True)
class Episodes:
    """A batch of few-shot tasks (see the module docstring for shapes)."""

    support_x: Inputs
    support_y: Tensor
    query_x: Inputs
    query_y: Tensor
    n_way: int | None = None  # None: regression

    @property
    def tasks(self) -> int:
        return int(self.support_y.shape[0])

    @property
    def is_regression(self) -> bool:
        return self.n_way is None

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "Episodes":
        def move(t: Tensor) -> Tensor:
            return t.to(device=device, dtype=dtype) if dtype is not None and t.is_floating_point() else t.to(device)

        return Episodes(_map(self.support_x, move), move(self.support_y) if self.is_regression else self.support_y.to(device),
                        _map(self.query_x, move), move(self.query_y) if self.is_regression else self.query_y.to(device),
                        self.n_way)

    def task(self, i: int) -> "Episodes":
        """Task ``i`` as a batch of one."""
        pick = lambda t: t[i:i + 1]  # noqa: E731
        return Episodes(_map(self.support_x, pick), pick(self.support_y), _map(self.query_x, pick), pick(self.query_y),
                        self.n_way)

    def chunks(self, size: int) -> list["Episodes"]:
        """Consecutive batches of at most ``size`` tasks (outer gradients are accumulated per chunk)."""
        cut = lambda t, a: t[a:a + size]  # noqa: E731
        return [Episodes(_map(self.support_x, lambda t: cut(t, a)), cut(self.support_y, a),
                         _map(self.query_x, lambda t: cut(t, a)), cut(self.query_y, a), self.n_way)
                for a in range(0, self.tasks, size)]

    def check(self) -> "Episodes":
        """Raise ``EpisodeError`` naming the first problem found; return self when sound."""
        for part, x, y in (("support", self.support_x, self.support_y), ("query", self.query_x, self.query_y)):
            if y.dim() != 2:
                raise EpisodeError(f"{part} labels must be [tasks, cases], got shape {tuple(y.shape)}")
            lead = _leading(x)
            if lead != tuple(y.shape):
                raise EpisodeError(f"{part} inputs {lead} and labels {tuple(y.shape)} disagree on tasks and cases")
            if y.shape[1] == 0:
                raise EpisodeError(f"empty {part} set")
            for name, t in (x.items() if isinstance(x, dict) else [("inputs", x)]):
                if t.is_floating_point() and not torch.isfinite(t).all():
                    raise EpisodeError(f"{part} {name} contain NaN or inf")
            if self.is_regression:
                if not torch.isfinite(y.float()).all():
                    raise EpisodeError(f"{part} targets contain NaN or inf")
            else:
                if y.is_floating_point():
                    raise EpisodeError(f"{part} labels must be integers for classification, got {y.dtype}")
                if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.n_way):
                    raise EpisodeError(f"{part} labels must lie in 0..{self.n_way - 1}, "
                                       f"found {int(y.min())}..{int(y.max())}")
        if self.support_y.shape[0] != self.query_y.shape[0]:
            raise EpisodeError(f"support has {self.support_y.shape[0]} tasks, query {self.query_y.shape[0]}")
        features = lambda x: ({k: tuple(v.shape[2:]) for k, v in x.items()} if isinstance(x, dict)  # noqa: E731
                              else tuple(x.shape[2:]))
        if features(self.support_x) != features(self.query_x):
            raise EpisodeError(f"support features {features(self.support_x)} and query features "
                               f"{features(self.query_x)} differ")
        return self
