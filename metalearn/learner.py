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
- ``adapted_state(support_x, support_y)``: the same adaptation as tensors (name -> Tensor, no support
  inputs among them), to save with safetensors; ``predict_with_state(state, query_x)`` gives exactly
  what ``adapt(support_x, support_y)(query_x)`` gives, from the state alone (the learner supplies only
  its architecture and settings, not its weights). Keys: ``params.<name>`` (MAML family, Reptile: the
  adapted network; ProtoNet, MatchingNet: the backbone) plus ``prototypes`` ``[n_way, D]`` (ProtoNet)
  or ``support_embeddings`` ``[S, D]`` and ``support_labels`` ``[S]`` (MatchingNet).
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


class AdaptedStateError(ValueError):
    """An adapted state that does not fit this learner; the message names the tensor and why."""


class MetaLearner(nn.Module):
    name: str = "base"

    def meta_step(self, batch: Episodes) -> StepMetrics:
        raise NotImplementedError

    def evaluate(self, batch: Episodes) -> StepMetrics:
        raise NotImplementedError

    def adapt(self, support_x: Inputs, support_y: Tensor) -> Predictor:
        raise NotImplementedError

    def adapted_state(self, support_x: Inputs, support_y: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def predict_with_state(self, state: dict[str, Tensor], query_x: Inputs) -> Tensor:
        raise NotImplementedError

    def meta_gradient(self, batch: Episodes) -> dict[str, Tensor]:
        """``meta_step(batch)``'s meta-gradient by parameter name (copies; for tests and benchmarks)."""
        self.meta_step(batch)
        return {k: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
                for k, p in self.named_parameters()}
