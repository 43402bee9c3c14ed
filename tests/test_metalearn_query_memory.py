"""MAML's lighter query forward (batching.py): the query set in chunks (backbones that embed each case
on its own) and lean batch-norm blocks (lean.py, backbones with batch norm over the set). Both must
leave exactly the meta-gradient of the plain per-task loop (reference.py, float64, 1e-10) and the
same step metrics, for second-order MAML, first-order MAML and Meta-SGD."""

import pytest
import torch

from metalearn.backbones import batch_norm
from metalearn.lean import set_norm_block

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def test_lean_block_is_conv4_block_forward_bitwise_and_backward_to_rounding():
    g = torch.Generator().manual_seed(7)
    for dtype in (torch.float32, torch.float64):
        for n, cin, side in ((9, 1, 16), (5, 3, 7), (4, 2, 3)):
            args = [torch.randn(n, cin, side, side, generator=g, dtype=dtype), torch.randn(6, cin, 3, 3, generator=g, dtype=dtype),
                    torch.randn(6, generator=g, dtype=dtype), torch.randn(6, generator=g, dtype=dtype),
                    torch.randn(6, generator=g, dtype=dtype)]
            args[0][:, :, : side // 2] = 0.5  # ties
            args = [a.requires_grad_() for a in args]
            x, w, b, nw, nb = args
            plain = torch.nn.functional.max_pool2d(
                torch.relu(batch_norm(torch.nn.functional.conv2d(x, w, b, padding=1), nw, nb, plain=False)), 2)
            lean = set_norm_block(*args)
            assert torch.equal(lean, plain)
            weights = torch.randn(plain.shape, generator=g, dtype=dtype)
            want = torch.autograd.grad((plain * weights).sum(), args)
            got = torch.autograd.grad((lean * weights).sum(), args)
            tol = 1e-12 if dtype == torch.float64 else 1e-5
            scale = max(1.0, max(float(b_.abs().max()) for b_ in want))
            for i, (a, b_) in enumerate(zip(got, want)):
                # the conv bias feeds batch norm: its true gradient is 0 and both give rounding noise
                assert float((a if i == 2 else a - b_).abs().max()) <= tol * scale, i


def test_lean_block_refuses_a_second_backward():
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    params = [torch.randn(3, 1, 3, 3, dtype=torch.float64, requires_grad=True)] + [
        torch.randn(3, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    out = set_norm_block(x, *params).sum()
    out.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="cannot run twice"):
        out.backward()
