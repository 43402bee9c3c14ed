"""What every fast learner shares: input checks, the chunked meta-step, evaluation, predictors.

A subclass gives ``task_fn(plan, n_way)``: a pure per-task function ``(sx, sy, qx, qy) -> (query loss,
query outputs)`` of the learner's current parameters, and ``predictor(sx, sy)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from metalearn.backbones import Backbone, Params
from metalearn.batching import Plan, choose_plan, map_tasks
from metalearn.episodes import DivergenceError, EpisodeError, Episodes, Inputs, _map
from metalearn.learner import MetaLearner, Predictor, StepMetrics


class FastLearner(MetaLearner):
    def __init__(self, net: Backbone, n_way: int | None, strategy: str | None = None,
                 task_chunk: int | None = None):
        super().__init__()
        if n_way is not None and n_way < 2:
            raise ValueError(f"n_way must be at least 2 (or None for regression), got {n_way}")
        self.net, self.n_way = net, n_way
        self.strategy, self.task_chunk = strategy, task_chunk
        choose_plan(net, torch.device("cpu"), strategy, task_chunk)  # refuse bad settings now

    # -- plumbing -----------------------------------------------------------------------------
    def plan(self) -> Plan:
        return choose_plan(self.net, next(self.net.parameters()).device, self.strategy, self.task_chunk)

    def net_params(self) -> Params:
        return dict(self.net.named_parameters())

    def check(self, batch: Episodes) -> Episodes:
        """``batch.check()`` plus what this learner needs (its n_way, classification or not)."""
        batch.check()
        if self.n_way is not None and batch.n_way != self.n_way:
            raise EpisodeError(f"{self.name} was built for {self.n_way}-way tasks, the batch is "
                               f"{'regression' if batch.n_way is None else f'{batch.n_way}-way'}")
        if self.n_way is None and batch.n_way is not None:
            raise EpisodeError(f"{self.name} was built for regression, the batch is {batch.n_way}-way")
        return batch

    def check_support(self, support_x: Inputs, support_y: Tensor) -> Episodes:
        """One task's support set (no task dimension) checked as a batch of one."""
        one = lambda t: t.unsqueeze(0)  # noqa: E731
        return self.check(Episodes(_map(support_x, one), one(support_y), _map(support_x, one), one(support_y),
                                   self.n_way_of(support_y)))

    def check_query(self, support: Episodes, query_x: Inputs) -> None:
        lead = next(iter(query_x.values())) if isinstance(query_x, dict) else query_x
        dummy = torch.zeros(1, lead.shape[0], dtype=support.support_y.dtype, device=support.support_y.device)
        Episodes(support.support_x, support.support_y, _map(query_x, lambda t: t.unsqueeze(0)), dummy,
                 support.n_way).check()

    def n_way_of(self, support_y: Tensor) -> int | None:
        return self.n_way

    def _clear_grads(self) -> None:
        for p in self.parameters():
            p.grad = None

    def _finite_or_raise(self, loss: Tensor, what: str) -> None:
        if not bool(torch.isfinite(loss).all()):
            self._clear_grads()
            raise DivergenceError(f"{self.name}: {what} is {loss.detach().flatten()[0].item()}; no gradients kept")

    def _metrics(self, loss_sum: float, hit_sum: float, batch: Episodes) -> StepMetrics:
        acc = None if batch.is_regression else hit_sum / batch.query_y.numel()
        return StepMetrics(loss=loss_sum / batch.tasks, accuracy=acc)

    # -- the interface ------------------------------------------------------------------------
    def task_fn(self, plan: Plan, n_way: int | None, train: bool = True):
        raise NotImplementedError

    def predictor(self, support: Episodes) -> Predictor:
        raise NotImplementedError

    def meta_step(self, batch: Episodes) -> StepMetrics:
        """Leave the meta-gradient (mean over tasks of the query-loss gradient) in ``p.grad``,
        replacing what was there; backward per task chunk. On NaN/inf: ``DivergenceError`` and
        every ``p.grad`` is None."""
        batch = self.check(batch)
        self._clear_grads()
        plan = self.plan()
        loss_sum, hit_sum = 0.0, 0.0
        for chunk, (losses, out) in map_tasks(self.task_fn(plan, batch.n_way), batch, plan):
            total = losses.sum()
            self._finite_or_raise(total, "the query loss")
            (total / batch.tasks).backward()
            loss_sum += float(total.detach())
            if not batch.is_regression:
                hit_sum += float((out.detach().argmax(-1) == chunk.query_y).sum())
        for p in self.parameters():
            if p.grad is not None:
                self._finite_or_raise(p.grad, "a meta-gradient")
        return self._metrics(loss_sum, hit_sum, batch)

    def evaluate(self, batch: Episodes) -> StepMetrics:
        batch = self.check(batch)
        plan = self.plan()
        loss_sum, hit_sum = 0.0, 0.0
        with torch.no_grad():
            for chunk, (losses, out) in map_tasks(self.task_fn(plan, batch.n_way, train=False), batch, plan):
                self._finite_or_raise(losses.sum(), "the query loss")
                loss_sum += float(losses.sum())
                if not batch.is_regression:
                    hit_sum += float((out.argmax(-1) == chunk.query_y).sum())
        return self._metrics(loss_sum, hit_sum, batch)

    def adapt(self, support_x: Inputs, support_y: Tensor) -> Predictor:
        support = self.check_support(support_x, support_y)
        predict = self.predictor(support)

        def checked(query_x: Inputs) -> Tensor:
            self.check_query(support, query_x)
            with torch.no_grad():
                return predict(query_x)

        return checked
