"""The algorithms as pure functions of (parameters, support, query).

``fn(params, x)`` is a backbone's forward (see backbones.py). Written for ONE task (inputs
``[N, ...]``, labels ``[N]``); every function also accepts a leading task dimension on inputs,
labels and (for MAML and Reptile) parameters, which is how the "batched" strategy runs all tasks
at once. Losses are means over a task's cases, one per task. How tasks are batched (vmap, a loop,
or that leading dimension) is batching.py's job; ``functorch`` says whether we run under vmap
(inner gradients by ``torch.func.grad``) or not (plain ``torch.autograd.grad``).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from metalearn.backbones import Params
from metalearn.episodes import _map

Forward = Callable[[Params, object], Tensor]


def task_loss(out: Tensor, y: Tensor, regression: bool) -> Tensor:
    """Per-task mean squared error on ``out[..., 0]`` (regression) or cross-entropy on logits;
    a scalar for one task, ``[T]`` for a batch."""
    if regression:
        return (out.squeeze(-1) - y).square().mean(-1)
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), reduction="none").view(y.shape).mean(-1)


def inner_adapt(fn: Forward, params: Params, lrs: dict, x, y: Tensor, steps: int, regression: bool,
                first_order: bool, functorch: bool) -> Params:
    """``steps`` of gradient descent on the support set, ``p - lr * grad`` per task; the inner
    gradient is detached when ``first_order`` (a constant to the outer gradient)."""
    if functorch:
        support_loss = lambda p: task_loss(fn(p, x), y, regression)  # noqa: E731
        for _ in range(steps):
            grads = torch.func.grad(support_loss)(params)
            if first_order:
                grads = {k: g.detach() for k, g in grads.items()}
            params = {k: p - lrs[k] * grads[k] for k, p in params.items()}
        return params
    with torch.enable_grad():
        params = {k: p if p.requires_grad else p.detach().requires_grad_() for k, p in params.items()}
        for _ in range(steps):
            loss = task_loss(fn(params, x), y, regression).sum()
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=not first_order)
            params = {k: p - lrs[k] * g for (k, p), g in zip(params.items(), grads)}
    return params


def per_task(params: Params, tasks: int | None) -> Params:
    """The parameters with a leading task dimension (views), or as they are when ``tasks`` is None."""
    return params if tasks is None else {k: p.expand(tasks, *p.shape) for k, p in params.items()}


def maml_task(fn: Forward, params: Params, lrs, sx, sy, qx, qy, steps: int, regression: bool,
              first_order: bool, functorch: bool, batched: bool, query_fn: Forward | None = None,
              query_chunk: Callable[[int, int], int | None] | None = None) -> tuple[Tensor, Tensor]:
    """MAML: adapt on the support set, return (query loss, query outputs). ``query_fn``: the
    forward for the query set when it differs from ``fn`` (a lean one, backbones.py).
    ``query_chunk(support cases, query cases)``: query cases per chunk, or None for the whole set
    (one task, no vmap; see ``chunked_query``)."""
    params = per_task(params, sy.shape[0] if batched else None)
    adapted = inner_adapt(fn, params, lrs, sx, sy, steps, regression, first_order, functorch)
    query_fn = query_fn or fn
    size = query_chunk(sy.shape[-1], qy.shape[-1]) if query_chunk is not None else None
    if size is not None and torch.is_grad_enabled():
        return chunked_query(query_fn, adapted, qx, qy, regression, size)
    out = query_fn(adapted, qx)
    return task_loss(out, qy, regression), out


def chunked_query(fn: Forward, adapted: Params, qx, qy: Tensor, regression: bool, size: int) -> tuple[Tensor, Tensor]:
    """One task's query loss and outputs, the query set ``size`` cases at a time; only for a
    forward that embeds each case on its own (no batch norm over the set).

    By the chain rule the meta-gradient is ``(d adapted / d theta)^T g`` with ``g`` the gradient of
    the query loss with respect to the adapted weights. ``g`` is summed chunk by chunk with the
    adapted weights as detached leaves, each chunk's graph freed by its ``torch.autograd.grad``, so
    at most one chunk's activations are alive beside the support graph instead of the whole query
    set's. The loss returned carries that gradient: its value is the query loss (a mean over the
    cases, each chunk weighted by its share), plus ``s - s.detach()`` (exactly zero; NaN when a
    gradient is not finite, so the step stops with DivergenceError as it would) for
    ``s = sum(<adapted, g>)``, whose gradient is the one above; ``backward`` on it therefore runs
    only through the adaptation (second order: into the support graph; Meta-SGD: into the learned
    rates). The outputs are detached."""
    leaves = {k: p.detach().requires_grad_() for k, p in adapted.items()}
    n = qy.shape[-1]
    total, grads, outs = None, None, []
    with torch.enable_grad():
        for start in range(0, n, size):
            part = lambda t: t[start:start + size]  # noqa: E731
            out = fn(leaves, _map(qx, part))
            y = part(qy)
            loss = task_loss(out, y, regression) * (y.shape[-1] / n)
            g = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True, materialize_grads=True)
            grads = list(g) if grads is None else [a.add_(b) for a, b in zip(grads, g)]
            total = loss.detach() if total is None else total + loss.detach()
            outs.append(out.detach())
        carrier = sum((p * g).sum() for p, g in zip(adapted.values(), grads))
    return total + (carrier - carrier.detach()), torch.cat(outs, dim=-2)


def reptile_task(fn: Forward, params: Params, lr: float, sx, sy, qx, qy, steps: int, regression: bool,
                 functorch: bool, batched: bool) -> tuple[Params, Tensor, Tensor]:
    """Reptile: (adapted parameters, query loss after adaptation, query outputs), no graph kept."""
    params = per_task({k: p.detach() for k, p in params.items()}, sy.shape[0] if batched else None)
    adapted = inner_adapt(fn, params, {k: lr for k in params}, sx, sy, steps, regression, True, functorch)
    adapted = {k: p.detach() for k, p in adapted.items()}
    out = fn(adapted, qx)
    return adapted, task_loss(out, qy, regression), out


def class_mask(y: Tensor, n_way: int, dtype: torch.dtype) -> Tensor:
    """``[..., cases, n_way]`` one-hot of labels (a comparison, so it runs under vmap)."""
    return (y.unsqueeze(-1) == torch.arange(n_way, device=y.device)).to(dtype)


def prototypes(z_support: Tensor, y_support: Tensor, n_way: int) -> Tensor:
    """The class means of the support embeddings, ``[..., n_way, D]``."""
    onehot = class_mask(y_support, n_way, z_support.dtype)
    return (onehot.transpose(-1, -2) @ z_support) / onehot.sum(-2).unsqueeze(-1)


def prototype_logits(z_support: Tensor, y_support: Tensor, z_query: Tensor, n_way: int, distance: str,
                     scale: float) -> Tensor:
    """Prototypical Networks: logits are minus the squared Euclidean distance to each class mean,
    or ``scale`` times the cosine similarity to it."""
    return logits_from_prototypes(prototypes(z_support, y_support, n_way), z_query, distance, scale)


def logits_from_prototypes(protos: Tensor, z_query: Tensor, distance: str, scale: float) -> Tensor:
    """``prototype_logits`` given the class means ``[..., N, D]`` (an adapted ProtoNet's state)."""
    if distance == "cosine":
        unit = lambda z: F.normalize(z, dim=-1, eps=1e-12)  # noqa: E731
        return scale * unit(z_query) @ unit(protos).transpose(-1, -2)
    return -(z_query.unsqueeze(-2) - protos.unsqueeze(-3)).square().sum(-1)


def matching_logits(z_support: Tensor, y_support: Tensor, z_query: Tensor, n_way: int, scale: float) -> Tensor:
    """Matching Networks (no full-context embeddings): attention is a softmax over ``scale`` times
    the cosine similarity to each support case; the class log-probability is the log of the
    attention mass on that class, returned as logits (their softmax is the class probability)."""
    unit = lambda z: F.normalize(z, dim=-1, eps=1e-12)  # noqa: E731
    log_attention = torch.log_softmax(scale * unit(z_query) @ unit(z_support).transpose(-1, -2), dim=-1)  # [.., Q, S]
    member = class_mask(y_support, n_way, z_support.dtype).bool().unsqueeze(-3)  # [.., 1, S, N]
    masked = torch.where(member, log_attention.unsqueeze(-1), torch.finfo(log_attention.dtype).min)
    return torch.logsumexp(masked, dim=-2)  # [.., Q, N]


def metric_task(fn: Forward, params: Params, logits_fn, n_way: int, sx, sy, qx, qy) -> tuple[Tensor, Tensor]:
    """A metric learner on a task: embed support and query sets separately, score the query."""
    logits = logits_fn(fn(params, sx), sy, fn(params, qx), n_way)
    return task_loss(logits, qy, False), logits
