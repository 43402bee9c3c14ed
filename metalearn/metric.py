"""Metric learners: Prototypical Networks and Matching Networks (cosine attention, no
full-context embeddings). No inner loop: a task is adapted by embedding its support set. The
support set and the query set are embedded separately (batch norm uses each set's statistics)."""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor

from metalearn.backbones import Backbone
from metalearn.base import PARAMS, FastLearner, state_params
from metalearn.batching import Plan
from metalearn.episodes import EpisodeError, Episodes, _map
from metalearn.functional import logits_from_prototypes, matching_logits, metric_task, prototype_logits, prototypes
from metalearn.learner import AdaptedStateError


class _MetricLearner(FastLearner):
    def __init__(self, backbone: Backbone, n_way: int | None = None, strategy: str | None = None,
                 task_chunk: int | None = None):
        super().__init__(backbone, n_way, strategy, task_chunk)

    def logits_fn(self):
        raise NotImplementedError

    def check(self, batch: Episodes) -> Episodes:
        if batch.is_regression:
            raise EpisodeError(f"{self.name} needs classification episodes (n_way), got regression")
        batch.check()
        if self.n_way is not None and batch.n_way != self.n_way:
            raise EpisodeError(f"{self.name} was built for {self.n_way}-way tasks, the batch is {batch.n_way}-way")
        present = (batch.support_y.unsqueeze(-1) == torch.arange(batch.n_way, device=batch.support_y.device)).any(1)
        if not bool(present.all()):
            task, label = (~present).nonzero()[0].tolist()
            raise EpisodeError(f"{self.name}: task {task} has no support case of class {label}")
        return batch

    def n_way_of(self, support_y: Tensor) -> int | None:
        if self.n_way is not None:
            return self.n_way
        if support_y.is_floating_point() or support_y.numel() == 0:
            return 0  # check() then names the problem
        return int(support_y.max()) + 1

    def task_fn(self, plan: Plan, n_way: int | None, train: bool = True):
        fn = partial(self.net.functional, plain_norm=plan.plain_norm)
        return partial(metric_task, fn, self.net_params(), self.logits_fn(), n_way)

    def support_state(self, support: Episodes) -> dict[str, Tensor]:
        """The backbone (``params.<name>``) and what the support set leaves (``summarise``)."""
        fn = partial(self.net.functional, plain_norm=False)  # one task, never under vmap
        params = {k: p.detach() for k, p in self.net_params().items()}
        with torch.no_grad():
            z_support = fn(params, _map(support.support_x, lambda t: t[0]))
        return {**{PARAMS + k: p for k, p in params.items()}, **self.summarise(z_support, support.support_y[0],
                                                                               support.n_way)}

    def summarise(self, z_support: Tensor, y_support: Tensor, n_way: int) -> dict[str, Tensor]:
        raise NotImplementedError


class ProtoNet(_MetricLearner):
    """Prototypical Networks: ``distance`` "euclidean" (squared) or "cosine" (times ``scale``)."""

    name = "protonet"

    def __init__(self, backbone: Backbone, n_way: int | None = None, distance: str = "euclidean",
                 scale: float = 10.0, strategy: str | None = None, task_chunk: int | None = None):
        super().__init__(backbone, n_way, strategy, task_chunk)
        if distance not in ("euclidean", "cosine"):
            raise ValueError(f"protonet distance must be 'euclidean' or 'cosine', got {distance!r}")
        self.distance, self.scale = distance, float(scale)

    def logits_fn(self):
        return partial(prototype_logits, distance=self.distance, scale=self.scale)

    def summarise(self, z_support: Tensor, y_support: Tensor, n_way: int) -> dict[str, Tensor]:
        return {"prototypes": prototypes(z_support, y_support, n_way)}

    def state_extras(self) -> dict:
        return {"prototypes": ((self.n_way or -1, self.net.out_features), True)}

    def check_state_values(self, state: dict[str, Tensor]) -> None:
        if state["prototypes"].shape[0] < 2:
            raise AdaptedStateError(f"{self.name}: the state has {state['prototypes'].shape[0]} prototypes, "
                                    "a task needs at least 2 classes")

    def predict_from(self, state: dict[str, Tensor], query_x) -> Tensor:
        z_query = self.net.functional(state_params(state), query_x, plain_norm=False)
        return logits_from_prototypes(state["prototypes"], z_query, self.distance, self.scale)


class MatchingNet(_MetricLearner):
    """Matching Networks: softmax attention over ``scale`` times cosine similarity."""

    name = "matchingnet"

    def __init__(self, backbone: Backbone, n_way: int | None = None, scale: float = 10.0,
                 strategy: str | None = None, task_chunk: int | None = None):
        super().__init__(backbone, n_way, strategy, task_chunk)
        self.scale = float(scale)

    def logits_fn(self):
        return partial(matching_logits, scale=self.scale)

    def summarise(self, z_support: Tensor, y_support: Tensor, n_way: int) -> dict[str, Tensor]:
        return {"support_embeddings": z_support, "support_labels": y_support}

    def state_extras(self) -> dict:
        return {"support_embeddings": ((-1, self.net.out_features), True), "support_labels": ((-1,), False)}

    def _ways(self, labels: Tensor) -> int:
        return self.n_way if self.n_way is not None else int(labels.max()) + 1

    def check_state_values(self, state: dict[str, Tensor]) -> None:
        z, y = state["support_embeddings"], state["support_labels"]
        if z.shape[0] != y.shape[0] or y.numel() == 0:
            raise AdaptedStateError(f"{self.name}: the state has {z.shape[0]} support embeddings and "
                                    f"{y.shape[0]} labels; they must agree and not be empty")
        ways = self._ways(y)
        if int(y.min()) < 0 or int(y.max()) >= ways or len(torch.unique(y)) != ways or ways < 2:
            raise AdaptedStateError(f"{self.name}: the state's support labels must cover 0..{ways - 1}, each "
                                    f"at least once (and at least 2 classes)")

    def predict_from(self, state: dict[str, Tensor], query_x) -> Tensor:
        z_query = self.net.functional(state_params(state), query_x, plain_norm=False)
        y = state["support_labels"]
        return matching_logits(state["support_embeddings"], y, z_query, self._ways(y), self.scale)
