"""Conv4's channels-last (NHWC) path on CPU in float32.

oneDNN's convolutions and, above all, its max-pool are faster on NHWC tensors than on NCHW ones
(torch 2.13, 1 thread, conv4 hidden 32 on 15 64x64 images, one Adam step of the from-scratch
baseline: 26 ms against 42 ms, 22 ms with the native batch norm's statistics; the pool alone 1.4 ms
against 12.9 ms): ``bench/conv_layout.py``, BENCHMARKS.md ``conv-layout``.

Two things make the path exact enough to be the default:

- **One channel is ambiguous.** ``contiguous(memory_format=channels_last)`` keeps NCHW strides for a
  tensor of one channel (both layouts are the same memory), and oneDNN then runs the whole first
  block NCHW; ``channels_last`` lays it out with NHWC strides explicitly.
- **Batch norm's statistics.** The native CPU batch norm on an NHWC tensor sums each channel in
  float32 in one pass on one thread: a forward error of about 1e-5 relative over 15 64x64 images
  (about 1e-6 in NCHW), enough to flip a max-pool winner where two values of a window nearly tie,
  which moved gradients by 1e-3 to 1e-2 of the largest. ``batch_norm`` takes the statistics in two
  passes (the mean, then the squared deviations from it), each case's map summed in float32 and the
  cases' sums added in float64, and normalises with the native kernel; its backward is the native
  one from those statistics, as ``F.batch_norm``'s own (``native_batch_norm_backward``, whose
  derivative autograd knows: second-order MAML differentiates through it). Gradients then agree
  with the float64 NCHW reference as NCHW float32 does (about 1e-5), at about 1.6x the speed of NCHW
  on one thread in one step (1.8x with the native statistics). The evaluation's from-scratch fits
  gain less (32 episodes each on two 1-thread processes, as ``--nproc 2``'s ranks: 60 s against
  NCHW's 73 s; on one 2-thread process 42 s against 41 s: nothing).

Not used in float64 (no oneDNN kernels; the references run there), under vmap (``plain_norm``),
on CUDA, or for the lean MAML query block (lean.py keeps NCHW); ``ENABLED = False`` turns it off
(bench/conv_layout.py times both layouts in one run).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

ENABLED = True
EPS = 1e-5  # batch norm's epsilon, as backbones.batch_norm


def pays(x: Tensor) -> bool:
    """Whether Conv4 runs NHWC on ``x``: CPU, float32."""
    return ENABLED and x.device.type == "cpu" and x.dtype == torch.float32


def channels_last(t: Tensor) -> Tensor:
    """``t`` laid out NHWC, one channel included (see the module's note)."""
    if t.shape[1] == 1:
        return torch.empty_like(t, memory_format=torch.channels_last).copy_(t)
    return t.contiguous(memory_format=torch.channels_last)


class _BatchNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        n, c = x.shape[0], x.shape[1]
        maps = x.permute(0, 2, 3, 1).reshape(n, -1, c)  # NHWC memory: a view, [case, pixel, channel]
        count = maps.shape[0] * maps.shape[1]
        mean = _sum(maps).div_(count)
        mean32 = mean.to(x.dtype)
        var = _sum((maps - mean32).square_()).div_(count)
        invstd = var.add(EPS).rsqrt_().to(x.dtype)
        out = F.batch_norm(x, mean32, var.to(x.dtype), weight, bias, training=False, eps=EPS)  # elementwise
        ctx.save_for_backward(x, weight, mean32, invstd)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight, mean, invstd = ctx.saved_tensors
        grad_x, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
            grad_out.contiguous(memory_format=torch.channels_last), x, weight, None, None, mean, invstd, True, EPS,
            list(ctx.needs_input_grad))
        return grad_x, grad_weight, grad_bias


def _sum(maps: Tensor) -> Tensor:
    """Per channel: each case's map summed in float32, the cases' sums added in float64 (a float64
    copy of the whole tensor first costs more than the batch norm itself)."""
    return maps.sum(1).sum(0, dtype=torch.float64)


def batch_norm(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """Batch norm over dims 0, 2, 3 of an NHWC float32 ``x`` with this batch's statistics, summed in float64."""
    return _BatchNorm.apply(x, weight, bias)
