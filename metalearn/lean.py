"""Conv4's batch-norm block for the query forward of a meta-step, keeping less for backward.

``set_norm_block(x, conv_w, conv_b, norm_w, norm_b)`` is the block of backbones.Conv4 -- 3x3
convolution (padding 1), batch norm with the statistics of the whole set being embedded (biased
variance, eps 1e-5), ReLU, 2x2 max-pool -- as one ``torch.autograd.Function`` whose backward is
written out. The forward is bitwise Conv4's NCHW forward (the same native batch norm; the pool picks
the same elements), so a meta-step's loss and accuracy do not change (in float32 on CPU Conv4 runs
NHWC, whose convolutions round differently: equal to rounding there); the gradients are autograd's up to
rounding (tests hold MAML through it to the plain reference in reference.py at 1e-10 in float64).
Only what is kept between forward and backward, and the order of some sums, differ.

Why: in 5-way 1-shot with 15 queries per class a MAML task's activation memory is its query forward,
and the first block dominates it (75 images x 64 channels x 28 x 28: 15 MB per full-resolution
float32 tensor). Autograd keeps the convolution output (for batch norm's backward), the ReLU output
(for ReLU's and the pool's backward) and the pool's int64 indices, and its backward holds three
full-resolution gradients at once (the pool's, ReLU's, batch norm's). The query set cannot be cut
into chunks instead (functional.chunked_query does that for other backbones): batch norm over the
set ties every case to the statistics of all of them, so a chunk's outputs are not the set's.

How:
- the pool runs before the ReLU: max commutes with a monotone function, so the values are the same,
  and a window whose maximum is not positive passes no gradient either way; the ReLU and its
  backward run at a quarter of the size;
- the 2x2 pool is a tournament over each window's four strided views, (0,0) vs (0,1) and (1,0) vs
  (1,1), then the two winners, a later element winning only if strictly greater: the first maximum
  in row-major order, which is what ``max_pool2d`` picks. The winner is kept as one uint8 per window
  (2 * row + column), not an int64 index (an odd-sized map pools its top-left even part, as
  max_pool2d does);
- batch norm's backward, dz = k (g - mean(g) - xhat mean(g xhat)) with k = weight * invstd and
  xhat = (z - mean) * invstd, is affine in z once the two per-channel means are known, and the
  gradient g reaching it is non-zero only at the windows' winners, so both means are sums over the
  pooled gradient (the winners' z gathered). The backward then turns the kept convolution output
  into its own gradient in place (that affine function, plus k g scattered to the winners), and runs
  the convolution's backward a quarter of the cases at a time, so no second full-resolution tensor
  is made.

Kept per block: the convolution output, the block's input and output (its output is the next block's
input), one uint8 per pooled value and two per-channel vectors. Measured (1 thread, profiler memory
events, conv4 64 channels, one 5-way 1-shot task with 75 queries): a MAML meta-step's peak of live
tensors falls from 64 to 42 MB second order and from 58 to 36 MB first order, and the step gets
faster (fewer full-resolution passes). Differentiable once: a meta-step differentiates its query
forward once (second-order MAML differentiates the support forward twice, which keeps autograd's
ops), and ``backward`` refuses to run twice since it reuses the kept tensor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

EPS = 1e-5  # batch norm's epsilon, as backbones.batch_norm
CHUNKS = 4  # a set's full-resolution temporaries are made a quarter of its cases at a time


def _quarters(t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The four strided views of each 2x2 window: (0,0), (0,1), (1,0), (1,1)."""
    h, w = t.shape[-2] // 2 * 2, t.shape[-1] // 2 * 2
    t = t[..., :h, :w]
    return t[..., 0::2, 0::2], t[..., 0::2, 1::2], t[..., 1::2, 0::2], t[..., 1::2, 1::2]


def _channel(v: Tensor) -> Tensor:
    return v.view(1, -1, 1, 1)


def _pool(y: Tensor, out: Tensor, winner: Tensor) -> None:
    """2x2 max-pool of ``y`` into ``out``, and each window's winner as ``2 * row + column`` into
    ``winner`` (uint8)."""
    a, b, c, d = _quarters(y)
    right, lower_right = b > a, d > c
    top, bottom = torch.maximum(a, b, out=out), torch.maximum(c, d)
    down = bottom > top  # a later element wins only if strictly greater: the first maximum wins ties
    column = right.logical_xor_(down & lower_right.logical_xor_(right))
    torch.bitwise_or(down.to(torch.uint8).bitwise_left_shift_(1), column, out=winner)
    torch.maximum(top, bottom, out=out)


def _winner_index(winner: Tensor, width: int) -> Tensor:
    """Flat indices into each full-resolution map (row-major, ``width`` wide) of the winners."""
    rows, cols = winner.shape[-2:]
    base = (torch.arange(rows, device=winner.device) * (2 * width)).view(-1, 1) \
        + torch.arange(cols, device=winner.device).view(1, -1) * 2
    # 2 * row + column -> row * width + column
    return (winner.long() >> 1).mul_(width - 2).add_(winner).add_(base).flatten(2)


def _parts(n: int) -> list[slice]:
    size = -(-n // CHUNKS)
    return [slice(s, min(s + size, n)) for s in range(0, n, size)]


class _SetNormBlock(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, conv_w: Tensor, conv_b: Tensor, norm_w: Tensor, norm_b: Tensor) -> Tensor:
        z = F.conv2d(x, conv_w, conv_b, padding=1).contiguous()
        # Native batch norm, as Conv4 runs it: the same statistics and outputs, bit for bit.
        y, mean, invstd = torch.native_batch_norm(z, norm_w, norm_b, None, None, True, 0.0, EPS)
        n, c, h, w = z.shape
        out = y.new_empty(n, c, h // 2, w // 2)
        winner = torch.empty(out.shape, dtype=torch.uint8, device=out.device)
        for part in _parts(n):  # a chunk of cases at a time: the pool's temporaries stay small
            _pool(y[part], out[part], winner[part])
        del y
        out.clamp_min_(0)  # the ReLU, after the pool
        ctx.z, ctx.stats = z, (mean, invstd, winner)
        ctx.save_for_backward(x, conv_w, norm_w, out)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        z = ctx.z
        if z is None:
            raise RuntimeError("metalearn.lean: this block's backward already ran (its kept tensor is reused "
                               "as the gradient); it cannot run twice (retain_graph is not supported)")
        ctx.z = None
        x, conv_w, norm_w, out = ctx.saved_tensors
        mean, invstd, winner = ctx.stats
        ctx.stats = None
        n, c, h, w = z.shape
        parts = _parts(n)
        channel = lambda v: v.view(1, -1, 1)  # noqa: E731
        flat = z.view(n, c, h * w)
        g = torch.ops.aten.threshold_backward(grad_out, out, 0).flatten(2)  # ReLU's backward, pooled
        # g reaches batch norm only at each window's winner, so its two sums over the set are pooled ones:
        grad_bias = g.sum((0, 2))  # sum of g: batch norm's shift gradient
        grad_weight = sum(  # sum of g * xhat: its scale gradient
            flat[p].gather(2, _winner_index(winner[p], w)).sub_(channel(mean)).mul_(channel(invstd)).mul_(g[p])
            .sum((0, 2)) for p in parts)
        k = norm_w * invstd
        count = n * h * w
        c1, c0 = channel(-k * grad_weight / count * invstd), channel(-k * grad_bias / count)
        g.mul_(channel(k))
        need = ctx.needs_input_grad
        grad_x, grad_conv_w, grad_conv_b = [], None, None
        for p in parts:
            # In place, z becomes its gradient k (g - mean(g) - xhat mean(g xhat)), xhat = (z - mean) invstd:
            grad_z = flat[p].sub_(channel(mean)).mul_(c1).add_(c0).scatter_add_(2, _winner_index(winner[p], w), g[p])
            gx, gw, gb = torch.ops.aten.convolution_backward(  # a chunk at a time: its buffers stay small
                grad_z.view(-1, c, h, w), x[p], conv_w, [conv_w.shape[0]], [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                [need[0], need[1], need[2]])
            grad_x.append(gx)
            grad_conv_w = gw if grad_conv_w is None or gw is None else grad_conv_w.add_(gw)
            grad_conv_b = gb if grad_conv_b is None or gb is None else grad_conv_b.add_(gb)
        del z, flat, g, grad_z
        return (torch.cat(grad_x) if need[0] else None, grad_conv_w, grad_conv_b,
                grad_weight if need[3] else None, grad_bias if need[4] else None)


def set_norm_block(x: Tensor, conv_w: Tensor, conv_b: Tensor, norm_w: Tensor, norm_b: Tensor) -> Tensor:
    """``max_pool2d(relu(batch_norm(conv2d(x, conv_w, conv_b, padding=1))), 2)`` with this set's
    statistics, keeping less for backward (see the module docstring); differentiable once."""
    return _SetNormBlock.apply(x, conv_w, conv_b, norm_w, norm_b)
