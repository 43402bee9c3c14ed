"""MAML (second order), first-order MAML and Meta-SGD (learned per-parameter inner rates)."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from metalearn.backbones import Backbone, WithHead
from metalearn.base import PARAMS, FastLearner
from metalearn.batching import Plan
from metalearn.episodes import Episodes, _map
from metalearn.functional import inner_adapt, maml_task


def _lr_key(name: str) -> str:
    return name.replace(".", "__")


class MAML(FastLearner):
    """The backbone plus a linear head (``n_way`` logits, or 1 output for regression), adapted by
    ``inner_steps`` of SGD at ``inner_lr`` on each support set. ``learn_inner_lr``: Meta-SGD,
    one learned rate per weight (``inner_lrs.*`` in the state dict). ``first_order``: the inner
    gradients are constants to the outer gradient. ``zero_head``: every task starts from a zero
    head, which the outer loop does not learn (Ye & Chao 2022, "How to train your MAML to excel
    in few-shot classification"): episodes relabel their classes at random, so a learned initial
    head only adds label noise, while from a zero head the first inner step makes each class's
    weights its support features' mean minus the mean over all classes, a prototype classifier.
    ``query_chunk``: query cases per chunk in a meta-step (loop strategy, backbones without batch
    norm over the set; None: batching.py's default), see functional.chunked_query."""

    name = "maml"

    def __init__(self, backbone: Backbone, n_way: int | None, inner_steps: int = 1, inner_lr: float = 0.01,
                 learn_inner_lr: bool = False, first_order: bool = False, zero_head: bool = False,
                 strategy: str | None = None, task_chunk: int | None = None, query_chunk: int | None = None):
        super().__init__(WithHead(backbone, 1 if n_way is None else n_way), n_way, strategy, task_chunk,
                         query_chunk)
        self.zero_head = bool(zero_head)
        if self.zero_head:
            for p in self.net.head.parameters():
                nn.init.zeros_(p)
                p.requires_grad_(False)  # never trained: each task starts from a fresh zero head
        if inner_steps < 1:
            raise ValueError(f"inner_steps must be at least 1, got {inner_steps}")
        self.inner_steps, self.inner_lr, self.first_order = inner_steps, float(inner_lr), first_order
        self.name = "fomaml" if first_order else "maml"
        self.inner_lrs = nn.ParameterDict(
            {_lr_key(k): nn.Parameter(torch.full_like(p, float(inner_lr))) for k, p in self.net.named_parameters()}
        ) if learn_inner_lr else None

    def net_params(self) -> dict:
        params = super().net_params()
        if self.zero_head:  # fresh leaves the inner loop differentiates and the outer gradient drops
            params.update({f"head.{k}": torch.zeros_like(p, requires_grad=True)
                           for k, p in self.net.head.named_parameters()})
        return params

    def lrs(self) -> dict:
        if self.inner_lrs is None:
            return {k: self.inner_lr for k, _ in self.net.named_parameters()}
        return {k: self.inner_lrs[_lr_key(k)] for k, _ in self.net.named_parameters()}

    def task_fn(self, plan: Plan, n_way: int | None, train: bool = True):
        fn = partial(self.net.functional, plain_norm=plan.plain_norm)
        params, lrs = self.net_params(), self.lrs()
        if not train:  # evaluation: no outer graph, so first order suffices
            params = {k: p.detach() for k, p in params.items()}
            lrs = {k: (v.detach() if torch.is_tensor(v) else v) for k, v in lrs.items()}
        query = {}
        if train:  # the query forward is differentiated once: lean blocks, or the query set in chunks
            query = {"query_fn": partial(self.net.functional, lean=True) if plan.lean_query else None,
                     "query_chunk": plan.query_cases}
        return partial(maml_task, fn, params, lrs, steps=self.inner_steps, regression=self.n_way is None,
                       first_order=self.first_order or not train, functorch=plan.functorch, batched=plan.batched,
                       **query)

    def support_state(self, support: Episodes) -> dict:
        """The adapted network: ``params.<name>``."""
        fn = partial(self.net.functional, plain_norm=False)  # one task, never under vmap
        params = {k: p.detach() for k, p in self.net_params().items()}
        lrs = {k: (v.detach() if torch.is_tensor(v) else v) for k, v in self.lrs().items()}
        sx, sy = _map(support.support_x, lambda t: t[0]), support.support_y[0]
        adapted = inner_adapt(fn, params, lrs, sx, sy, self.inner_steps, self.n_way is None, True, functorch=False)
        return {PARAMS + k: p.detach() for k, p in adapted.items()}

    def predict_from(self, state: dict, query_x) -> torch.Tensor:
        return self._predict_from_params(state, query_x)
