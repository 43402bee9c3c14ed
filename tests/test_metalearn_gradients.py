"""Every algorithm's fast meta-gradient equals the plain per-task autograd loop (reference.py) in
float64, for every strategy, on a tiny MLP and a tiny conv net with batch norm."""

import pytest
import torch

from metalearn import Episodes, build_backbone, build_learner
from metalearn.batching import choose_plan
from metalearn.reference import reference_gradient

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

TOL = 1e-10
N_WAY = 3


def classification(image: bool, tasks: int = 3, shots: int = 2, queries: int = 2, seed: int = 0) -> Episodes:
    g = torch.Generator().manual_seed(seed)
    shape = (1, 16, 16) if image else (4,)
    sx = torch.randn(tasks, N_WAY * shots, *shape, generator=g, dtype=torch.float64)
    qx = torch.randn(tasks, N_WAY * queries, *shape, generator=g, dtype=torch.float64)
    sy = torch.arange(N_WAY).repeat_interleave(shots).repeat(tasks, 1)
    qy = torch.arange(N_WAY).repeat_interleave(queries).repeat(tasks, 1)
    return Episodes(sx, sy, qx, qy, N_WAY)


def regression(tasks: int = 3, shots: int = 4, seed: int = 0) -> Episodes:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(tasks, 2 * shots, 1, generator=g, dtype=torch.float64) * 10 - 5
    y = torch.sin(x[..., 0] + torch.rand(tasks, 1, generator=g, dtype=torch.float64))
    return Episodes(x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:], None)


def mlp(features: int = 4):
    return build_backbone("mlp", in_features=features, hidden=(8, 8))


def conv():
    return build_backbone("conv4", in_channels=1, hidden=4, image_size=16)


CONFIGS = [
    ("maml", {"inner_steps": 1, "inner_lr": 0.3}),
    ("maml", {"inner_steps": 2, "inner_lr": 0.3}),
    ("maml", {"inner_steps": 2, "inner_lr": 0.3, "learn_inner_lr": True}),
    ("fomaml", {"inner_steps": 1, "inner_lr": 0.3}),
    ("fomaml", {"inner_steps": 2, "inner_lr": 0.3, "learn_inner_lr": True}),
    ("reptile", {"inner_steps": 1, "inner_lr": 0.3}),
    ("reptile", {"inner_steps": 2, "inner_lr": 0.3}),
    ("protonet", {}),
    ("protonet", {"distance": "cosine"}),
    ("matchingnet", {}),
]


def _learner(name, backbone, config, strategy, n_way=N_WAY, chunk=None):
    torch.manual_seed(1)
    learner = build_learner(name, backbone, n_way=n_way, strategy=strategy, task_chunk=chunk, **config).double()
    if "learn_inner_lr" in config:  # distinct rates per weight, so a mix-up of rates would show
        with torch.no_grad():
            for p in learner.inner_lrs.values():
                p.mul_(torch.rand_like(p) + 0.5)
    return learner


def _max_diff(learner, batch):
    fast = learner.meta_gradient(batch)
    ref = reference_gradient(learner, batch)
    assert set(ref) == set(fast), "the reference and the fast path disagree on the meta-parameters"
    scale = max(float(g.abs().max()) for g in ref.values())
    assert scale > 1e-4, "a gradient this small would pass any comparison"
    return max(float((fast[k] - ref[k]).abs().max()) for k in ref)


@pytest.mark.parametrize("strategy", ["batched", "vmap", "loop"])
@pytest.mark.parametrize("name,config", CONFIGS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CONFIGS)])
def test_mlp_meta_gradient_matches_reference(name, config, strategy):
    assert _max_diff(_learner(name, mlp(), config, strategy), classification(image=False)) < TOL


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
@pytest.mark.parametrize("name,config", CONFIGS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CONFIGS)])
def test_conv_meta_gradient_matches_reference(name, config, strategy):
    assert _max_diff(_learner(name, conv(), config, strategy), classification(image=True)) < TOL


@pytest.mark.parametrize("strategy", ["batched", "vmap", "loop"])
@pytest.mark.parametrize("name", ["maml", "fomaml", "reptile"])
def test_regression_meta_gradient_matches_reference(name, strategy):
    learner = _learner(name, mlp(1), {"inner_steps": 2, "inner_lr": 0.05}, strategy, n_way=None)
    assert _max_diff(learner, regression()) < TOL


def test_fusion_meta_gradient_matches_reference():
    backbone = build_backbone("fusion", image={"in_channels": 1, "hidden": 4, "image_size": 16},
                              record={"in_features": 3, "hidden": [5]})
    b = classification(image=True)
    g = torch.Generator().manual_seed(3)
    fused = Episodes({"image": b.support_x, "record": torch.randn(*b.support_y.shape, 3, generator=g).double()},
                     b.support_y,
                     {"image": b.query_x, "record": torch.randn(*b.query_y.shape, 3, generator=g).double()},
                     b.query_y, N_WAY)
    for strategy in ("vmap", "loop"):
        learner = _learner("maml", backbone, {"inner_steps": 1, "inner_lr": 0.3}, strategy)
        assert _max_diff(learner, fused) < TOL


@pytest.mark.parametrize("chunk", [1, 2])
def test_chunked_vmap_and_batched_match_reference(chunk):
    for strategy in ("vmap", "batched"):
        learner = _learner("maml", mlp(), {"inner_steps": 2, "inner_lr": 0.3}, strategy, chunk=chunk)
        assert _max_diff(learner, classification(image=False)) < TOL


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_conv_bias_feeding_batch_norm_gets_exactly_zero_meta_gradient(strategy):
    """The bias of a conv feeding batch norm cancels in the normalisation, so its true gradient
    is 0. Native batch norm under vmap gives it a non-zero second-order gradient in torch 2.13;
    this is the cheapest symptom to watch for."""
    learner = _learner("maml", conv(), {"inner_steps": 2, "inner_lr": 0.3}, strategy)
    grads = learner.meta_gradient(classification(image=True))
    for i in range(4):
        weight_grad = grads[f"net.backbone.blocks.{i}.conv.weight"]
        assert float(weight_grad.abs().max()) > 1e-6
        assert float(grads[f"net.backbone.blocks.{i}.conv.bias"].abs().max()) < 1e-12


def test_vmap_uses_plain_batch_norm_and_batched_refuses_conv():
    assert choose_plan(conv(), torch.device("cpu"), "vmap").plain_norm
    assert not choose_plan(conv(), torch.device("cpu")).plain_norm  # the loop may use the native kernel
    assert choose_plan(mlp(), torch.device("cpu")).strategy == "batched"
    with pytest.raises(ValueError, match="batched strategy needs an MLP"):
        choose_plan(conv(), torch.device("cpu"), "batched")
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in conv().modules())


@pytest.mark.parametrize("name,config", [c for c in CONFIGS if c[0] != "protonet" or not c[1]],
                         ids=lambda c: c if isinstance(c, str) else None)
def test_conv_in_float32_runs_channels_last_and_matches_the_float64_reference(name, config):
    """On CPU in float32 Conv4 runs NHWC (metalearn/nhwc.py: batch norm's statistics summed in
    float64, its native backward; the pool before the ReLU): its meta-gradient on the loop strategy
    (second-order MAML differentiates through that backward) equals the plain float64 loop to float32
    rounding."""
    import copy

    from metalearn import nhwc

    learner64 = _learner(name, conv(), config, "loop")
    learner32 = copy.deepcopy(learner64).float()
    batch64 = classification(image=True)
    batch32 = Episodes(batch64.support_x.float(), batch64.support_y, batch64.query_x.float(), batch64.query_y, N_WAY)
    assert nhwc.pays(batch32.support_x) and not nhwc.pays(batch64.support_x)
    one_channel = nhwc.channels_last(batch32.support_x[0])
    assert one_channel.stride(1) == 1 and torch.equal(one_channel, batch32.support_x[0])  # NHWC, same values
    fast = learner32.meta_gradient(batch32)
    ref = reference_gradient(learner64, batch64)
    scale = max(float(g.abs().max()) for g in ref.values())
    assert scale > 1e-4
    worst = max(float((fast[k].double() - ref[k]).abs().max()) for k in ref)
    assert worst < 1e-4 * scale, f"float32 NHWC meta-gradient off by {worst:.2e} (scale {scale:.2e})"


def test_nhwc_batch_norm_sums_its_statistics_accurately():
    """On one thread the native batch norm on an NHWC float32 tensor sums each channel in one float32
    pass (7e-5 off over 15 64x64 maps with a mean of 3.5, measured); metalearn/nhwc.py sums in float64:
    as close to the float64 result as NCHW float32, NHWC kept, and its gradient the float64 one's."""
    import torch.nn.functional as F

    from metalearn import nhwc

    g = torch.Generator().manual_seed(0)
    x64 = torch.rand(15, 32, 64, 64, generator=g, dtype=torch.float64) * 3 + 2
    w64, b64 = torch.rand(32, generator=g, dtype=torch.float64) + 0.5, torch.randn(32, generator=g, dtype=torch.float64)
    x64.requires_grad_()
    reference = F.batch_norm(x64, None, None, w64, b64, training=True, eps=1e-5)
    upstream = torch.randn(reference.shape, generator=g, dtype=torch.float64)
    (reference_grad,) = torch.autograd.grad(reference, x64, upstream)
    x = nhwc.channels_last(x64.detach().float()).requires_grad_()
    out = nhwc.batch_norm(x, w64.float(), b64.float())
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert float((out.detach().double() - reference.detach()).abs().max()) < 5e-6
    (grad,) = torch.autograd.grad(out, x, upstream.float())
    assert float((grad.double() - reference_grad).abs().max()) < 1e-4 * float(reference_grad.abs().max())
