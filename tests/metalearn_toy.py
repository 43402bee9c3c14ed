"""Small few-shot problems whose answer is known, and two small real learners, for metalearn's tests.

- ``clusters``: 5-way classification. Each class is a Gaussian cluster in 4 informative
  dimensions; 12 more dimensions are loud noise. Meta-train and meta-test classes are disjoint,
  and a class's label changes from task to task, so only what transfers (which dimensions to
  look at) can be meta-learned. One shot from scratch is hard; a learned metric is easy.
- ``sinusoids``: regression of ``a sin(x + b)`` from a few points (Finn et al. 2017).

``sample(step)`` is a deterministic function of the step, as the trainer requires.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from metalearn.episodes import Episodes
from metalearn.learner import MetaLearner, StepMetrics

INFORMATIVE, NOISE = 4, 12
FEATURES = INFORMATIVE + NOISE


def _centers(split: str, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(60, INFORMATIVE, generator=g) * 2.0
    return centers[:40] if split == "train" else centers[40:]


def _draw(centers: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    signal = centers.unsqueeze(-2) + 0.5 * torch.randn(*centers.shape[:-1], n, INFORMATIVE, generator=g)
    noise = 3.0 * torch.randn(*centers.shape[:-1], n, NOISE, generator=g)
    return torch.cat([signal, noise], -1)


def clusters(step: int, *, tasks: int = 8, n_way: int = 5, shots: int = 1, query: int = 5, split: str = "train",
             seed: int = 0) -> Episodes:
    """``tasks`` episodes of ``n_way``-way ``shots``-shot classification, ``query`` queries per class."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step * 7919 + (0 if split == "train" else 1))
    centers = _centers(split)
    classes = torch.stack([torch.randperm(len(centers), generator=g)[:n_way] for _ in range(tasks)])
    chosen = centers[classes]  # [T, n_way, INFORMATIVE]
    sx = _draw(chosen, shots, g).reshape(tasks, n_way * shots, FEATURES)
    qx = _draw(chosen, query, g).reshape(tasks, n_way * query, FEATURES)
    sy = torch.arange(n_way).repeat_interleave(shots).expand(tasks, -1).clone()
    qy = torch.arange(n_way).repeat_interleave(query).expand(tasks, -1).clone()
    return Episodes(sx, sy, qx, qy, n_way)


def cluster_pretraining_data(per_class: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """All meta-train classes as one ordinary classification set (inputs, class index 0..39)."""
    g = torch.Generator().manual_seed(seed + 17)
    centers = _centers("train")
    x = _draw(centers, per_class, g).reshape(-1, FEATURES)
    y = torch.arange(len(centers)).repeat_interleave(per_class)
    return x, y


def sinusoids(step: int, *, tasks: int = 8, shots: int = 10, query: int = 10, seed: int = 0) -> Episodes:
    g = torch.Generator().manual_seed(seed * 1_000_003 + step * 7919 + 5)
    amplitude = 0.1 + 4.9 * torch.rand(tasks, 1, generator=g)
    phase = math.pi * torch.rand(tasks, 1, generator=g)
    x = 10 * torch.rand(tasks, shots + query, generator=g) - 5
    y = amplitude * torch.sin(x + phase)
    return Episodes(x[:, :shots, None], y[:, :shots], x[:, shots:, None], y[:, shots:], None)


def mlp(inputs: int, hidden: int, outputs: int, dropout: float = 0.0) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, hidden),
                         nn.ReLU(), nn.Linear(hidden, outputs))


class TinyProto(MetaLearner):
    """Prototypical networks over an MLP embedding (squared Euclidean distance to class means)."""

    name = "tiny-proto"

    def __init__(self, features: int = FEATURES, n_way: int = 5, hidden: int = 32, embedding: int = 16,
                 dropout: float = 0.0):
        super().__init__()
        self.n_way = n_way
        self.net = mlp(features, hidden, embedding, dropout)

    def _logits(self, sx, sy, qx):
        z = self.net(sx)
        protos = torch.zeros(self.n_way, z.shape[-1], dtype=z.dtype, device=z.device).index_add(0, sy, z)
        protos = protos / torch.bincount(sy, minlength=self.n_way).clamp(min=1).unsqueeze(-1).to(z.dtype)
        return -torch.cdist(self.net(qx), protos) ** 2

    def _scores(self, batch: Episodes):
        losses, correct = [], []
        for i in range(batch.tasks):
            logits = self._logits(batch.support_x[i], batch.support_y[i], batch.query_x[i]).float()
            losses.append(F.cross_entropy(logits, batch.query_y[i]))
            correct.append((logits.argmax(-1) == batch.query_y[i]).float().mean())
        return torch.stack(losses).mean(), float(torch.stack(correct).mean())

    def meta_step(self, batch: Episodes) -> StepMetrics:
        total, acc = 0.0, 0.0
        for chunk in batch.chunks(4):
            loss, a = self._scores(chunk)
            (loss * chunk.tasks / batch.tasks).backward()
            total += float(loss.detach()) * chunk.tasks / batch.tasks
            acc += a * chunk.tasks / batch.tasks
        return StepMetrics(total, acc)

    def evaluate(self, batch: Episodes) -> StepMetrics:
        was_training = self.training
        self.eval()
        with torch.no_grad():
            loss, acc = self._scores(batch)
        self.train(was_training)
        return StepMetrics(float(loss), acc)

    def adapt(self, support_x, support_y):
        return lambda query_x: self._logits(support_x, support_y, query_x)


class TinyFOMAML(MetaLearner):
    """First-order MAML over an MLP: inner SGD on the support set, query gradient at the adapted weights."""

    name = "tiny-fomaml"

    def __init__(self, features: int = 1, n_way: int | None = None, hidden: int = 32, inner_lr: float = 0.01,
                 inner_steps: int = 3):
        super().__init__()
        self.n_way, self.inner_lr, self.inner_steps = n_way, inner_lr, inner_steps
        self.net = mlp(features, hidden, 1 if n_way is None else n_way)

    def _loss(self, out, y):
        return F.mse_loss(out.squeeze(-1), y) if self.n_way is None else F.cross_entropy(out, y)

    def _fast(self, sx, sy):
        fast = {k: v.detach().requires_grad_() for k, v in self.net.named_parameters()}
        for _ in range(self.inner_steps):
            with torch.enable_grad():
                grads = torch.autograd.grad(self._loss(functional_call(self.net, fast, (sx,)).float(), sy),
                                            list(fast.values()))
            fast = {k: (v - self.inner_lr * g).detach().requires_grad_() for (k, v), g in zip(fast.items(), grads)}
        return fast

    def _task(self, batch: Episodes, i: int, backward_scale: float | None):
        fast = self._fast(batch.support_x[i], batch.support_y[i])
        out = functional_call(self.net, fast, (batch.query_x[i],)).float()
        loss = self._loss(out, batch.query_y[i])
        if backward_scale is not None:
            grads = torch.autograd.grad(loss, list(fast.values()))
            for p, g in zip(self.net.parameters(), grads):
                p.grad = g * backward_scale if p.grad is None else p.grad + g * backward_scale
        acc = None if self.n_way is None else float((out.argmax(-1) == batch.query_y[i]).float().mean())
        return float(loss.detach()), acc

    def meta_step(self, batch: Episodes) -> StepMetrics:
        results = [self._task(batch, i, 1.0 / batch.tasks) for i in range(batch.tasks)]
        return self._mean(results)

    def evaluate(self, batch: Episodes) -> StepMetrics:
        return self._mean([self._task(batch, i, None) for i in range(batch.tasks)])

    @staticmethod
    def _mean(results):
        loss = sum(r[0] for r in results) / len(results)
        accs = [r[1] for r in results]
        return StepMetrics(loss, None if accs[0] is None else sum(accs) / len(accs))

    def adapt(self, support_x, support_y):
        fast = self._fast(support_x, support_y)
        return lambda query_x: functional_call(self.net, fast, (query_x,)).squeeze(-1) if self.n_way is None \
            else functional_call(self.net, fast, (query_x,))


def tiny_backbone(kind: str, channels: int = 1):
    """A tiny ``mlp`` (4 features), ``conv4`` (16x16 images) or ``fusion`` of both, for exactness tests."""
    from metalearn import build_backbone

    if kind == "mlp":
        return build_backbone("mlp", in_features=4, hidden=(8, 8))
    if kind == "conv4":
        return build_backbone("conv4", in_channels=channels, hidden=4, image_size=16)
    return build_backbone("fusion", image={"in_channels": channels, "hidden": 4, "image_size": 16},
                          record={"in_features": 4, "hidden": [6]})
