"""The one interface every meta-learning algorithm implements.

A ``MetaLearner`` is an ``nn.Module`` whose ``state_dict`` holds everything learned (backbone
weights, and for Meta-SGD the per-parameter inner learning rates), so a checkpoint or a
published model is that state dict written with safetensors.

- ``meta_step(batch)``: compute the outer loss on a batch of episodes and leave the
  meta-gradient in ``p.grad`` of every meta-parameter (Reptile: the pseudo-gradient
  ``theta - mean(adapted theta)``), accumulated task chunk by task chunk so memory stays flat;
  it never steps an optimizer. Returns ``StepMetrics``.
- ``evaluate(batch)``: adapt on each task's support set and score its query set, no gradients kept.
- ``adapt(support_x, support_y)``: one task's support set (no task dimension) -> a ``Predictor``.
- ``meta_gradient(batch)``: ``meta_step`` then a copy of every ``p.grad`` by parameter name.
- ``Predictor(query_x)``: logits ``[Q, n_way]`` (classification) or predictions ``[Q]`` (regression).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from metalearn.episodes import Episodes, Inputs


@dataclass(frozen=True)
class StepMetrics:
    loss: float
    accuracy: float | None = None  # None for regression


Predictor = Callable[[Inputs], Tensor]


class MetaLearner(nn.Module):
    name: str = "base"

    def meta_step(self, batch: Episodes) -> StepMetrics:
        raise NotImplementedError

    def evaluate(self, batch: Episodes) -> StepMetrics:
        raise NotImplementedError

    def adapt(self, support_x: Inputs, support_y: Tensor) -> Predictor:
        raise NotImplementedError

    def meta_gradient(self, batch: Episodes) -> dict[str, Tensor]:
        """``meta_step(batch)``'s meta-gradient by parameter name (copies; for tests and benchmarks)."""
        self.meta_step(batch)
        return {k: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
                for k, p in self.named_parameters()}
