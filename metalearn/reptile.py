"""Reptile: adapt each task by plain SGD on its support set; the meta-gradient left in ``p.grad``
is the pseudo-gradient ``theta - mean over tasks of adapted theta``, so any optimizer applies it
(SGD at rate 1 moves theta to the mean adapted weights)."""

from __future__ import annotations

from functools import partial

import torch

from metalearn.backbones import Backbone, WithHead
from metalearn.base import PARAMS, FastLearner
from metalearn.batching import Plan, map_tasks
from metalearn.episodes import Episodes, _map
from metalearn.functional import inner_adapt, reptile_task
from metalearn.learner import StepMetrics


class Reptile(FastLearner):
    """The backbone plus a linear head, like MAML; ``inner_steps`` of SGD at ``inner_lr``."""

    name = "reptile"

    def __init__(self, backbone: Backbone, n_way: int | None, inner_steps: int = 5, inner_lr: float = 0.01,
                 strategy: str | None = None, task_chunk: int | None = None):
        super().__init__(WithHead(backbone, 1 if n_way is None else n_way), n_way, strategy, task_chunk)
        if inner_steps < 1:
            raise ValueError(f"inner_steps must be at least 1, got {inner_steps}")
        self.inner_steps, self.inner_lr = inner_steps, float(inner_lr)

    def _task(self, plan: Plan):
        fn = partial(self.net.functional, plain_norm=plan.plain_norm)
        return partial(reptile_task, fn, self.net_params(), self.inner_lr, steps=self.inner_steps,
                       regression=self.n_way is None, functorch=plan.functorch, batched=plan.batched)

    def task_fn(self, plan: Plan, n_way: int | None, train: bool = True):
        task = self._task(plan)
        return lambda *args: task(*args)[1:]

    def meta_step(self, batch: Episodes) -> StepMetrics:
        batch = self.check(batch)
        self._clear_grads()
        plan = self.plan()
        params = self.net_params()
        adapted_sum = {k: torch.zeros_like(p) for k, p in params.items()}
        loss_sum, hit_sum = 0.0, 0.0
        with torch.no_grad():
            for chunk, (adapted, losses, out) in map_tasks(self._task(plan), batch, plan):
                self._finite_or_raise(losses.sum(), "the query loss")
                for k, v in adapted.items():
                    self._finite_or_raise(v, f"adapted {k}")
                    adapted_sum[k] += v.sum(0)
                loss_sum += float(losses.sum())
                if not batch.is_regression:
                    hit_sum += float((out.argmax(-1) == chunk.query_y).sum())
        for k, p in params.items():
            p.grad = p.detach() - adapted_sum[k] / batch.tasks
        return self._metrics(loss_sum, hit_sum, batch)

    def support_state(self, support: Episodes) -> dict:
        """The adapted network: ``params.<name>``."""
        fn = partial(self.net.functional, plain_norm=False)  # one task, never under vmap
        params = {k: p.detach() for k, p in self.net_params().items()}
        sx, sy = _map(support.support_x, lambda t: t[0]), support.support_y[0]
        adapted = inner_adapt(fn, params, {k: self.inner_lr for k in params}, sx, sy, self.inner_steps,
                              self.n_way is None, True, functorch=False)
        return {PARAMS + k: p.detach() for k, p in adapted.items()}

    def predict_from(self, state: dict, query_x) -> torch.Tensor:
        return self._predict_from_params(state, query_x)
