"""What every fast learner shares: input checks, the chunked meta-step, evaluation, predictors.

A subclass gives ``task_fn(plan, n_way)``: a pure per-task function ``(sx, sy, qx, qy) -> (query loss,
query outputs)`` of the learner's current parameters; ``support_state(support)``: an adaptation as
tensors; and ``predict_from(state, query_x)``. ``adapt`` and ``predict_with_state`` both predict
through ``predict_from``, so a saved state predicts exactly what the adaptation did.
"""

from __future__ import annotations

import torch
from torch import Tensor

from metalearn.backbones import Backbone, Params
from metalearn.batching import Plan, choose_plan, map_tasks
from metalearn.episodes import DivergenceError, EpisodeError, Episodes, Inputs, _map
from metalearn.learner import AdaptedStateError, MetaLearner, Predictor, StepMetrics

PARAMS = "params."  # the prefix of a state's network weights


def state_params(state: dict[str, Tensor]) -> Params:
    """The network weights in an adapted state, keyed like ``named_parameters()``."""
    return {k[len(PARAMS):]: v for k, v in state.items() if k.startswith(PARAMS)}


class FastLearner(MetaLearner):
    def __init__(self, net: Backbone, n_way: int | None, strategy: str | None = None,
                 task_chunk: int | None = None, query_chunk: int | None = None):
        super().__init__()
        if n_way is not None and n_way < 2:
            raise ValueError(f"n_way must be at least 2 (or None for regression), got {n_way}")
        self.net, self.n_way = net, n_way
        self.strategy, self.task_chunk, self.query_chunk = strategy, task_chunk, query_chunk
        choose_plan(net, torch.device("cpu"), strategy, task_chunk, query_chunk)  # refuse bad settings now

    # -- plumbing -----------------------------------------------------------------------------
    def plan(self) -> Plan:
        return choose_plan(self.net, next(self.net.parameters()).device, self.strategy, self.task_chunk,
                           self.query_chunk)

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

    def support_state(self, support: Episodes) -> dict[str, Tensor]:
        """The adaptation to a checked support set (one task, as a batch of one) as tensors."""
        raise NotImplementedError

    def predict_from(self, state: dict[str, Tensor], query_x: Inputs) -> Tensor:
        """Query outputs from a state; unchecked (``predict_with_state`` checks)."""
        raise NotImplementedError

    def state_extras(self) -> dict[str, tuple[tuple[int, ...], bool]]:
        """A state's tensors besides ``params.*``: name -> (shape, -1 for any size; floating point)."""
        return {}

    def check_state_values(self, state: dict[str, Tensor]) -> None:
        """Checks of a state's values beyond names, shapes and dtypes (subclasses)."""

    def predictor(self, support: Episodes) -> Predictor:
        state = self.support_state(support)
        return lambda query_x: self.predict_from(state, query_x)

    def _predict_from_params(self, state: dict[str, Tensor], query_x: Inputs) -> Tensor:
        out = self.net.functional(state_params(state), query_x, plain_norm=False)  # one task, never under vmap
        return out.squeeze(-1) if self.n_way is None else out

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

    def adapted_state(self, support_x: Inputs, support_y: Tensor) -> dict[str, Tensor]:
        """``adapt`` as tensors (copies, contiguous): save them with safetensors, predict with
        ``predict_with_state``. Holds no support inputs, only weights and embeddings."""
        state = self.support_state(self.check_support(support_x, support_y))
        return {k: v.detach().clone().contiguous() for k, v in state.items()}

    def predict_with_state(self, state: dict[str, Tensor], query_x: Inputs) -> Tensor:
        """Exactly ``adapt(support_x, support_y)(query_x)`` for the state of that support set; only
        the learner's architecture and settings are used, not its weights."""
        self.check_state(state)
        self.check_state_query(query_x)
        device = next(self.net.parameters()).device
        with torch.no_grad():
            return self.predict_from({k: v.to(device) for k, v in state.items()}, query_x)

    def check_state(self, state: dict[str, Tensor]) -> None:
        """``AdaptedStateError`` naming the first tensor that is missing, unknown or does not fit."""
        if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
            raise AdaptedStateError(f"{self.name}: an adapted state is a dict of name -> Tensor")
        expected = {PARAMS + k: (tuple(p.shape), True) for k, p in self.net.named_parameters()}
        expected.update(self.state_extras())
        missing, unknown = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        if missing or unknown:
            raise AdaptedStateError(f"{self.name}: the adapted state does not fit this learner (missing: "
                                    f"{', '.join(missing[:5]) or 'none'}; unknown: {', '.join(unknown[:5]) or 'none'})")
        for key, (shape, floating) in expected.items():
            t = state[key]
            if t.dim() != len(shape) or any(want not in (-1, got) for want, got in zip(shape, t.shape)):
                want = "[" + ", ".join("any" if d == -1 else str(d) for d in shape) + "]"
                raise AdaptedStateError(f"{self.name}: state tensor {key} has shape {list(t.shape)}, expected {want}")
            if t.is_floating_point() != floating:
                raise AdaptedStateError(f"{self.name}: state tensor {key} is {t.dtype}, expected "
                                        f"{'floating point' if floating else 'integers'}")
            if floating and not bool(torch.isfinite(t).all()):
                raise AdaptedStateError(f"{self.name}: state tensor {key} contains NaN or inf")
        self.check_state_values(state)

    def check_state_query(self, query_x: Inputs) -> None:
        """``EpisodeError`` unless ``query_x`` is a non-empty, finite set of inputs this network takes."""
        shape = self.net.case_shape
        if isinstance(shape, dict) != isinstance(query_x, dict):
            raise EpisodeError(f"{self.name}: the query must be "
                               f"{'a dict ' + str(sorted(shape)) if isinstance(shape, dict) else 'one tensor'}")
        parts = query_x.items() if isinstance(query_x, dict) else [("inputs", query_x)]
        if isinstance(shape, dict) and set(query_x) != set(shape):
            raise EpisodeError(f"{self.name}: the query has parts {sorted(query_x)}, expected {sorted(shape)}")
        counts = set()
        for name, t in parts:
            want = shape[name] if isinstance(shape, dict) else shape
            if not isinstance(t, Tensor) or not t.is_floating_point() or t.dim() < 1:
                raise EpisodeError(f"{self.name}: query {name} must be a floating point tensor [cases, ...]")
            if want is not None and tuple(t.shape[1:]) != tuple(want):
                raise EpisodeError(f"{self.name}: query {name} have shape {list(t.shape)}, expected [cases, "
                                   f"{', '.join(map(str, want))}]")
            if t.shape[0] == 0:
                raise EpisodeError("empty query set")
            if not bool(torch.isfinite(t).all()):
                raise EpisodeError(f"query {name} contain NaN or inf")
            counts.add(int(t.shape[0]))
        if len(counts) > 1:
            raise EpisodeError(f"fused query inputs disagree on their case counts: {sorted(counts)}")
