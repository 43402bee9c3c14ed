"""Many independent networks trained at once: one per episode, stacked along a leading dimension.

The baselines (``metalearn.baselines``) fit a fresh network (or head) on each episode's support
set. Fitting E of them one after another is E small, overhead-bound trainings; here their
parameters are stacked (``[E, *shape]`` per parameter) and one forward/backward serves all E:

- ``stacked_forward(backbone, params, x)``: the backbone's function on ``x [E, N, *features]``
  with episode ``e``'s parameters on episode ``e``'s inputs, written out (no vmap): linear layers
  as one batched matrix product, conv4 as a grouped convolution (``groups=E``) whose batch norm
  runs on the ``[N, E*C, H, W]`` layout, i.e. per episode and channel over the episode's own set,
  exactly the set normalisation of ``Conv4.functional``. Fusion is both, concatenated.
- ``fit_stacked(...)``: full-batch Adam for each network, written as ``torch.optim.Adam``'s
  single-tensor update (the same operations, per element), with per-episode early stopping: an
  episode whose support loss is below ``stop_loss`` stops there, its parameters are kept as they
  are and it leaves the working batch (the others carry on without computing it).

Every episode's numbers are those of fitting it alone (``metalearn.baselines._fit``) up to the
rounding of batched kernels (equal to 1e-12 in float64: tests/test_batched_baselines.py), so they
do not depend on how episodes are grouped. Only ``MLP``, ``Conv4``, ``Fusion`` backbones and a
linear head are written out (``can_stack``); the baselines fall back to the per-episode loop for others.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalearn.backbones import MLP, Conv4, Fusion
from metalearn.episodes import Inputs

Stacked = dict[str, Tensor]  # parameter name (as named_parameters) -> [E, *shape]


def can_stack(backbone: nn.Module) -> bool:
    """Whether ``stacked_forward`` writes this backbone out."""
    if isinstance(backbone, Fusion):
        return can_stack(backbone.image) and can_stack(backbone.record)
    return isinstance(backbone, (MLP, Conv4))


def stack_parameters(modules: list[nn.Module]) -> Stacked:
    """The modules' parameters (same architecture) stacked along a new leading dimension."""
    names = [name for name, _ in modules[0].named_parameters()]
    per = [dict(m.named_parameters()) for m in modules]
    return {name: torch.stack([p[name].detach() for p in per]) for name in names}


def _stacked_linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """x [E, N, in], weight [E, out, in], bias [E, out] -> [E, N, out]."""
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


def _stacked_mlp(mlp: MLP, params: Stacked, x: Tensor, prefix: str) -> Tensor:
    for i in range(len(mlp.layers)):
        x = F.relu(_stacked_linear(x, params[f"{prefix}layers.{i}.weight"], params[f"{prefix}layers.{i}.bias"]))
    return x


def _stacked_conv4(conv: Conv4, params: Stacked, x: Tensor, prefix: str) -> Tensor:
    e, n = x.shape[0], x.shape[1]
    h = x.transpose(0, 1).reshape(n, e * x.shape[2], *x.shape[3:])  # [N, E*C, H, W]: episode-major channels
    for i, block in enumerate(conv.blocks):
        p = f"{prefix}blocks.{i}."
        weight = params[p + "conv.weight"]
        h = F.conv2d(h, weight.reshape(-1, *weight.shape[2:]), params[p + "conv.bias"].reshape(-1), padding=1, groups=e)
        if block.norm is not None:  # per (episode, channel) over the episode's N cases and all pixels
            h = F.batch_norm(h, None, None, params[p + "norm.weight"].reshape(-1), params[p + "norm.bias"].reshape(-1),
                             training=True, eps=1e-5)
        h = F.max_pool2d(F.relu(h), 2)
    c = h.shape[1] // e
    return h.reshape(n, e, c * h.shape[2] * h.shape[3]).transpose(0, 1)  # [E, N, C*h*w], flatten(1)'s order


def stacked_features(backbone: nn.Module, params: Stacked, x: Inputs, prefix: str = "backbone.") -> Tensor:
    """The backbone's flattened features ``[E, N, D]`` with episode e's parameters on ``x[e]``."""
    if isinstance(backbone, Fusion):
        return torch.cat([stacked_features(backbone.image, params, x["image"], prefix + "image."),
                          stacked_features(backbone.record, params, x["record"], prefix + "record.")], dim=-1)
    if isinstance(backbone, Conv4):
        if x.dim() != 5 or x.shape[2] != backbone.in_channels:
            raise ValueError(f"conv4 expects images [E, N, {backbone.in_channels}, H, W], got {tuple(x.shape)}")
        return _stacked_conv4(backbone, params, x, prefix)
    if isinstance(backbone, MLP):
        if x.shape[-1] != backbone.in_features:
            raise ValueError(f"mlp expects {backbone.in_features} features, got shape {tuple(x.shape)}")
        return _stacked_mlp(backbone, params, x, prefix)
    raise TypeError(f"no stacked form for {type(backbone).__name__}")


def stacked_head(params: Stacked, features: Tensor, prefix: str = "head.") -> Tensor:
    return _stacked_linear(features, params[prefix + "weight"], params[prefix + "bias"])


def per_episode_loss(out: Tensor, y: Tensor, regression: bool) -> Tensor:
    """Each episode's mean loss ``[E]`` (out ``[E, N, K]``), as ``baselines._loss`` of that episode."""
    if regression:
        return (out.squeeze(-1) - y.float()).square().mean(1)  # float targets, as _loss's mse_loss(.., y.float())
    e, n, k = out.shape
    return F.cross_entropy(out.reshape(e * n, k), y.reshape(e * n), reduction="none").reshape(e, n).mean(1)


def _take(x: Inputs, keep: Tensor) -> Inputs:
    return {k: v[keep] for k, v in x.items()} if isinstance(x, dict) else x[keep]


def fit_stacked(forward: Callable[[Stacked, Inputs], Tensor], params: Stacked, x: Inputs, y: Tensor, *, steps: int,
                lr: float, regression: bool, weight_decay: float = 0.0, stop_loss: float = 0.0,
                betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> tuple[Stacked, Tensor]:
    """Fit E stacked networks, each on its own ``(x[e], y[e])``: full-batch Adam for at most ``steps``
    steps, episode e stopping once its loss is below ``stop_loss`` (``baselines._fit`` for each alone).

    ``forward(params, x) -> [E, N, K]``. Returns the fitted parameters (new tensors) and the steps
    each episode took ``[E]``.
    """
    beta1, beta2 = betas
    total = y.shape[0]
    fitted = {k: v.detach().clone() for k, v in params.items()}
    taken = torch.full((total,), steps, dtype=torch.long, device=y.device)
    alive = torch.arange(total, device=y.device)  # episodes still fitting, as indices into the full stack (on y's device:
    # a CUDA mask cannot index a CPU tensor; found on an H200, bench/gpu_checks.py)
    work = {k: v.clone() for k, v in fitted.items()}
    avg = {k: torch.zeros_like(v) for k, v in work.items()}
    avg_sq = {k: torch.zeros_like(v) for k, v in work.items()}
    wx, wy = x, y
    for step in range(steps):
        for v in work.values():
            v.requires_grad_(True)
        losses = per_episode_loss(forward(work, wx), wy, regression)
        stop = losses.detach() < stop_loss  # a NaN loss never stops, as in _fit
        if bool(stop.all()):
            taken[alive] = step
            for k in fitted:
                fitted[k][alive] = work[k].detach()
            return fitted, taken
        # every episode's gradient is its own (they share no parameter): one backward for the batch,
        # the stopped episodes' rows dropped afterwards (cheaper than a second forward of the rest)
        grads = list(torch.autograd.grad(losses.sum(), list(work.values())))
        if bool(stop.any()):
            done, keep = alive[stop], ~stop
            taken[done] = step
            for k in fitted:
                fitted[k][done] = work[k].detach()[stop]
            alive, wx, wy = alive[keep], _take(wx, keep), wy[keep]
            work = {k: v.detach()[keep] for k, v in work.items()}
            avg = {k: v[keep] for k, v in avg.items()}
            avg_sq = {k: v[keep] for k, v in avg_sq.items()}
            grads = [g[keep] for g in grads]
        count = step + 1
        bias_correction1 = 1 - beta1 ** count
        bias_correction2_sqrt = (1 - beta2 ** count) ** 0.5
        step_size = lr / bias_correction1
        updated = {}
        for (name, param), grad in zip(work.items(), grads):
            param = param.detach()
            if weight_decay != 0:
                grad = grad.add(param, alpha=weight_decay)
            avg[name].lerp_(grad, 1 - beta1)
            avg_sq[name].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (avg_sq[name].sqrt() / bias_correction2_sqrt).add_(eps)
            updated[name] = param.addcdiv(avg[name], denom, value=-step_size)
        work = updated
    for k in fitted:
        fitted[k][alive] = work[k].detach()
    return fitted, taken
