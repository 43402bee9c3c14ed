"""CUDA smoke test: a few training steps with bf16 autocast, a checkpoint round trip and evaluation on the GPU.

Skipped where no CUDA device is present.
"""

from __future__ import annotations

import math

import pytest
import torch

from metalearn import build_backbone, build_learner
from metalearn.checkpoint import CHECKPOINT_NAME, load_checkpoint
from metalearn.evaluation import score
from metalearn.trainer import Trainer
from tests.metalearn_toy import FEATURES, TinyProto, clusters

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.mark.parametrize("name", ["maml", "protonet", "tiny-proto"])
def test_a_few_bf16_steps_on_cuda(name, tmp_path):
    torch.manual_seed(0)
    if name == "tiny-proto":
        learner = TinyProto(hidden=16, embedding=8)
    else:
        learner = build_learner(name, build_backbone("mlp", in_features=FEATURES, hidden=(32, 32)), n_way=5)
    trainer = Trainer(learner, lambda step: clusters(step, tasks=4, shots=5), max_steps=30, lr=5e-3,
                      val_episodes=clusters(0, tasks=8, split="test", shots=5), val_every=10,
                      checkpoint_dir=tmp_path, checkpoint_every=10)
    assert trainer.device.type == "cuda" and trainer.amp  # chosen automatically
    result = trainer.fit()
    assert result.device.startswith("cuda") and result.steps == 30
    assert all(math.isfinite(h["loss"]) for h in result.history)
    assert all(p.device.type == "cuda" and p.dtype == torch.float32 for p in learner.parameters())
    assert sum(h["loss"] for h in result.history[-5:]) < sum(h["loss"] for h in result.history[:5])
    cpu_copy = TinyProto(hidden=16, embedding=8) if name == "tiny-proto" else build_learner(
        name, build_backbone("mlp", in_features=FEATURES, hidden=(32, 32)), n_way=5)
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME, cpu_copy).step == 30  # written from CUDA, read on CPU
    test = score(learner, clusters(0, tasks=20, split="test", seed=2, shots=5), device="cuda")
    assert test.episodes == 20 and test.mean > 0.3


def test_stacked_baselines_fit_on_cuda_as_on_the_cpu():
    """The stacked from-scratch fit keeps its episode bookkeeping on the data's device (a CUDA stop mask
    indexed a CPU index tensor: found on an H200 by bench/gpu_checks.py); float64, CPU loop against CUDA stack."""
    from metalearn.baselines import FromScratch
    from metalearn.evaluation import episode_scores

    episodes = clusters(0, tasks=6, shots=5, split="test").to("cpu", torch.float64)
    factory = lambda: build_backbone("mlp", in_features=FEATURES, hidden=(16,)).double()  # noqa: E731
    method = lambda stacked: FromScratch(factory, 5, steps=30, lr=0.05, stop_loss=0.3, stacked=stacked)  # noqa: E731
    on_cpu = episode_scores(method(False), episodes, device="cpu", seed=0)
    on_cuda = episode_scores(method(True), episodes.to("cuda"), device="cuda", seed=0)
    assert on_cuda == on_cpu
