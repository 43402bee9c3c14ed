"""MAML's lighter query forward (batching.py): the query set in chunks (backbones that embed each case
on its own) and lean batch-norm blocks (lean.py, backbones with batch norm over the set). Both must
leave exactly the meta-gradient of the plain per-task loop (reference.py, float64, 1e-10) and the
same step metrics, for second-order MAML, first-order MAML and Meta-SGD."""

import dataclasses

import pytest
import torch

from metalearn import Episodes, build_backbone, build_learner
from metalearn.backbones import Conv4, batch_norm
from metalearn.batching import choose_plan
from metalearn.lean import set_norm_block
from metalearn.reference import reference_gradient

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

TOL = 1e-10
N_WAY, SHOTS, QUERIES = 3, 2, 4  # 6 support and 12 query cases per task

CONFIGS = [
    ("maml", {"inner_steps": 1, "inner_lr": 0.3}),
    ("maml", {"inner_steps": 2, "inner_lr": 0.3}),
    ("maml", {"inner_steps": 1, "inner_lr": 0.3, "learn_inner_lr": True}),
    ("maml", {"inner_steps": 2, "inner_lr": 0.3, "learn_inner_lr": True}),
    ("fomaml", {"inner_steps": 1, "inner_lr": 0.3}),
    ("fomaml", {"inner_steps": 2, "inner_lr": 0.3}),
    ("fomaml", {"inner_steps": 2, "inner_lr": 0.3, "learn_inner_lr": True}),
]
IDS = [f"{n}-{c['inner_steps']}step" + ("-metasgd" if c.get("learn_inner_lr") else "") for n, c in CONFIGS]


def episodes(shape, tasks=2, seed=0, dtype=torch.float64, flat_regions=False) -> Episodes:
    g = torch.Generator().manual_seed(seed)
    sx = torch.randn(tasks, N_WAY * SHOTS, *shape, generator=g, dtype=dtype)
    qx = torch.randn(tasks, N_WAY * QUERIES, *shape, generator=g, dtype=dtype)
    if flat_regions:  # constant patches: exact ties inside pooling windows
        sx[..., : shape[-2] // 2, :] = 0.25
        qx[..., : shape[-2] // 2, :] = 0.25
    sy = torch.arange(N_WAY).repeat_interleave(SHOTS).repeat(tasks, 1)
    qy = torch.arange(N_WAY).repeat_interleave(QUERIES).repeat(tasks, 1)
    return Episodes(sx, sy, qx, qy, N_WAY)


def mlp():
    return build_backbone("mlp", in_features=4, hidden=(8, 8))


def conv(norm="batch", size=16):
    return build_backbone("conv4", in_channels=1, hidden=4, image_size=size, norm=norm)


def make(name, backbone, config, dtype=torch.float64, **settings):
    torch.manual_seed(1)
    learner = build_learner(name, backbone, n_way=N_WAY, **config, **settings).to(dtype)
    if config.get("learn_inner_lr"):  # distinct rates per weight, so a mix-up of rates would show
        with torch.no_grad():
            for p in learner.inner_lrs.values():
                p.mul_(torch.rand_like(p) + 0.5)
    return learner


def max_diff(learner, batch) -> float:
    fast = learner.meta_gradient(batch)
    ref = reference_gradient(learner, batch)
    assert set(fast) == set(ref)
    scale = max(float(g.abs().max()) for g in ref.values())
    assert scale > 1e-4, "a gradient this small would pass any comparison"
    if learner.inner_lrs is not None:  # Meta-SGD: the learned rates get their gradients
        assert all(float(g.abs().max()) > 0 for k, g in fast.items() if k.startswith("inner_lrs."))
    return max(float((fast[k] - ref[k]).abs().max()) for k in ref)


def without(learner, like, **fields):
    """``learner`` with the weights of ``like``, running the plain query forward (its plan with
    ``fields`` switched off)."""
    learner.load_state_dict(like.state_dict())
    plan = learner.plan
    learner.plan = lambda: dataclasses.replace(plan(), **fields)
    return learner


# -- query chunks: backbones that embed each case on its own -----------------------------------------
@pytest.mark.parametrize("chunk", [1, 3, 5, 7, None], ids=lambda c: f"chunk{c}")  # 12 queries: 3 divides, 5, 7 don't
@pytest.mark.parametrize("name,config", CONFIGS, ids=IDS)
@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_query_chunks_leave_the_reference_meta_gradient(kind, name, config, chunk):
    backbone, shape = (mlp(), (4,)) if kind == "mlp" else (conv(norm="none"), (1, 16, 16))
    learner = make(name, backbone, config, strategy="loop", query_chunk=chunk)
    batch = episodes(shape)
    want = chunk if chunk is not None else max(N_WAY * SHOTS, -(-N_WAY * QUERIES // 4))  # default: 6 -> 2 chunks
    assert learner.plan().query_cases(N_WAY * SHOTS, N_WAY * QUERIES) == want
    assert max_diff(learner, batch) < TOL


@pytest.mark.parametrize("name", ["maml", "fomaml"])
def test_query_chunks_for_regression_and_fused_inputs(name):
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 16, 1, generator=g, dtype=torch.float64) * 10 - 5
    y = torch.sin(x[..., 0])
    regression = Episodes(x[:, :4], y[:, :4], x[:, 4:], y[:, 4:], None)
    torch.manual_seed(1)
    learner = build_learner(name, build_backbone("mlp", in_features=1, hidden=(8, 8)), n_way=None, inner_steps=2,
                            inner_lr=0.05, strategy="loop", query_chunk=5).double()
    assert max_diff(learner, regression) < TOL

    fusion = build_backbone("fusion", image={"in_channels": 1, "hidden": 4, "image_size": 16, "norm": "none"},
                            record={"in_features": 3, "hidden": [5]})
    b = episodes((1, 16, 16))
    fused = Episodes({"image": b.support_x, "record": torch.randn(*b.support_y.shape, 3, generator=g).double()},
                     b.support_y,
                     {"image": b.query_x, "record": torch.randn(*b.query_y.shape, 3, generator=g).double()},
                     b.query_y, N_WAY)
    assert max_diff(make(name, fusion, {"inner_steps": 1, "inner_lr": 0.3}, query_chunk=5), fused) < TOL


@pytest.mark.parametrize("name", ["maml", "fomaml"])
def test_query_chunks_leave_the_step_metrics(name):
    batch = episodes((1, 16, 16), tasks=3, seed=4)
    chunked = make(name, conv(norm="none"), {"inner_steps": 1, "inner_lr": 0.3}, query_chunk=5)
    plain = without(make(name, conv(norm="none"), {"inner_steps": 1, "inner_lr": 0.3}), chunked, chunk_queries=False)
    assert chunked.plan().chunk_queries and not plain.plan().chunk_queries
    a, b = chunked.meta_step(batch), plain.meta_step(batch)
    assert abs(a.loss - b.loss) < 1e-12 and a.accuracy == b.accuracy
    for (k, p), q in zip(chunked.named_parameters(), plain.parameters()):
        assert float((p.grad - q.grad).abs().max()) < TOL, k


# -- lean batch-norm blocks: the query set stays whole --------------------------------------------------
@pytest.mark.parametrize("size,flat", [(16, False), (18, True), (23, False)], ids=["16px", "18px-ties", "23px"])
@pytest.mark.parametrize("name,config", CONFIGS, ids=IDS)
def test_lean_blocks_leave_the_reference_meta_gradient(name, config, size, flat):
    """18 and 23 pixels give odd maps (9, 11, 5) whose last row and column the pool drops; flat
    regions give exact ties in pooling windows, where the first maximum must win."""
    learner = make(name, conv(size=size), config)
    assert learner.plan().lean_query and not learner.plan().chunk_queries  # the CPU default for batch norm
    assert max_diff(learner, episodes((1, size, size), flat_regions=flat)) < TOL


@pytest.mark.parametrize("name", ["maml", "fomaml"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lean_blocks_leave_the_step_metrics_bit_for_bit(name, dtype):
    """The forward is the same native batch norm and picks the same pool elements, so the loss and
    accuracy a step reports are identical; gradients agree to rounding. In float32 on CPU Conv4's
    plain path runs NHWC (metalearn/nhwc.py) and the lean block NCHW: the convolutions round
    differently, so there the loss agrees to rounding and the accuracy is the same."""
    batch = episodes((1, 16, 16), tasks=3, seed=5, dtype=dtype, flat_regions=True)
    lean = make(name, conv(), {"inner_steps": 2, "inner_lr": 0.3}, dtype=dtype)
    plain = without(make(name, conv(), {"inner_steps": 2, "inner_lr": 0.3}, dtype=dtype), lean, lean_query=False)
    a, b = lean.meta_step(batch), plain.meta_step(batch)
    if dtype == torch.float64:
        assert a == b
    else:
        assert a.accuracy == b.accuracy and a.loss == pytest.approx(b.loss, rel=1e-5)
    tol = TOL if dtype == torch.float64 else 1e-5
    for (k, p), q in zip(lean.named_parameters(), plain.parameters()):
        assert float((p.grad - q.grad).abs().max()) <= tol * max(1.0, float(q.grad.abs().max())), k


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


# -- where each applies, and bad settings -------------------------------------------------------------
def test_plans_choose_the_lighter_query_forward_by_backbone_strategy_and_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert choose_plan(conv(), cpu).lean_query and not choose_plan(conv(), cpu).chunk_queries
    assert choose_plan(conv(norm="none"), cpu).chunk_queries and not choose_plan(conv(norm="none"), cpu).lean_query
    for plan in (choose_plan(conv(), cpu, "vmap"), choose_plan(mlp(), cpu), choose_plan(mlp(), cpu, "vmap")):
        assert not plan.lean_query and not plan.chunk_queries  # batched and vmap run every query set at once
    assert not choose_plan(conv(), cuda).lean_query and not choose_plan(conv(norm="none"), cuda).chunk_queries
    assert choose_plan(conv(norm="none"), cuda, query_chunk=8).chunk_queries  # asked for: on any device
    plan = choose_plan(mlp(), cpu, "loop")
    assert plan.query_cases(5, 75) == 19 and plan.query_cases(25, 75) == 25  # 4 chunks, none below the support set
    assert plan.query_cases(10, 10) is None and plan.query_cases(5, 12) == 5  # one chunk (plain path), or 3 of 5, 5, 2
    assert choose_plan(mlp(), cpu, "loop", query_chunk=75).query_cases(5, 75) is None
    assert conv().normalises_over_set and not conv(norm="none").normalises_over_set and not mlp().normalises_over_set
    assert build_backbone("fusion", image={"hidden": 4}, record={"in_features": 3, "hidden": [5]}).normalises_over_set


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "8"])
def test_bad_query_chunks_are_refused(bad):
    with pytest.raises(ValueError, match="query_chunk must be a whole number of query cases, at least 1"):
        build_learner("maml", mlp(), n_way=N_WAY, strategy="loop", query_chunk=bad)


def test_query_chunks_are_refused_where_they_would_change_the_result_or_do_nothing():
    with pytest.raises(ValueError, match="batch norm normalises the query set"):
        build_learner("maml", conv(), n_way=N_WAY, query_chunk=4)
    with pytest.raises(ValueError, match="batch norm normalises the query set"):
        build_learner("fomaml", build_backbone("fusion", image={"hidden": 4}, record={"in_features": 3, "hidden": [5]}),
                      n_way=N_WAY, query_chunk=4)
    for strategy in ("batched", "vmap"):
        with pytest.raises(ValueError, match=f"applies to the loop strategy.*the {strategy} strategy"):
            build_learner("maml", mlp(), n_way=N_WAY, strategy=strategy, query_chunk=4)
    with pytest.raises(ValueError, match="applies to the loop strategy"):
        build_learner("maml", mlp(), n_way=N_WAY, query_chunk=4)  # an MLP's default strategy is batched
    with pytest.raises(ValueError, match=r"reptile does not take \['query_chunk'\]"):
        build_learner("reptile", mlp(), n_way=N_WAY, query_chunk=4)
    assert isinstance(build_learner("maml", conv(norm="none"), n_way=N_WAY, query_chunk=4).net.backbone, Conv4)


@pytest.mark.parametrize("name", ["maml", "fomaml"])
@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_a_zero_head_drops_only_the_heads_own_meta_gradient(kind, name):
    """zero_head on the lighter query paths: every other weight gets the reference meta-gradient
    of the same network with a zero head it learns, and the head gets none."""
    backbone = mlp if kind == "mlp" else conv
    batch = episodes((4,) if kind == "mlp" else (1, 16, 16))
    config = {"inner_steps": 2, "inner_lr": 0.3}
    zero = make(name, backbone(), config, zero_head=True)
    learned = make(name, backbone(), config)
    learned.load_state_dict(zero.state_dict())  # the same weights, the head at zero
    fast, ref = zero.meta_gradient(batch), reference_gradient(learned, batch)
    assert not any(fast[k].any() for k in fast if k.startswith("net.head."))
    assert any(ref[k].abs().max() > 1e-4 for k in ref if k.startswith("net.head."))
    body = [k for k in ref if not k.startswith("net.head.")]
    assert max(float((fast[k] - ref[k]).abs().max()) for k in body) < TOL
    assert max(float(ref[k].abs().max()) for k in body) > 1e-4
