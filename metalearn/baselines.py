"""The two baselines every meta-learner is compared with, on the same episodes.

- ``FromScratch``: a fresh backbone and linear head trained only on each episode's support set.
- ``PretrainFineTune``: the backbone pretrained as an ordinary classifier (or regressor) on all
  meta-train data, then per episode a new linear head fitted on the support set (optionally
  fine-tuning every layer).

Both take the backbone as a factory, ``backbone_factory() -> nn.Module`` mapping inputs
``[N, *features]`` (or a dict of them) to features ``[N, ...]`` (flattened to ``[N, D]``), so any
backbone works. Both offer ``adapt(support_x, support_y) -> Predictor`` like a ``MetaLearner``.
A fresh head (and ``FromScratch``'s backbone) draws its initial weights from the torch RNG as it
is: ``metalearn.evaluation`` seeds it per episode, so an episode's score does not depend on the
process or the order it runs in; the pretrained network depends on ``seed`` alone.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalearn.episodes import Inputs
from metalearn.learner import Predictor

BackboneFactory = Callable[[], nn.Module]


def _to(x: Inputs, device: torch.device) -> Inputs:
    return {k: v.to(device) for k, v in x.items()} if isinstance(x, dict) else x.to(device)


def _rows(x: Inputs, index: Tensor) -> Inputs:
    return {k: v[index] for k, v in x.items()} if isinstance(x, dict) else x[index]


def _count(x: Inputs) -> int:
    return int(next(iter(x.values())).shape[0]) if isinstance(x, dict) else int(x.shape[0])


class BackboneAndHead(nn.Module):
    """A backbone followed by a linear head over its flattened features."""

    def __init__(self, backbone: nn.Module, head: nn.Linear):
        super().__init__()
        self.backbone, self.head = backbone, head

    def features(self, x: Inputs) -> Tensor:
        return self.backbone(x).flatten(1)

    def forward(self, x: Inputs) -> Tensor:
        return self.head(self.features(x))


def _head_for(backbone: nn.Module, sample: Inputs, outputs: int) -> nn.Linear:
    """A linear head sized to the backbone's feature width (found with one forward pass)."""
    was_training = backbone.training
    backbone.eval()
    with torch.no_grad():
        width = backbone(sample).flatten(1).shape[1]
    backbone.train(was_training)
    device = next(backbone.parameters()).device
    return nn.Linear(width, outputs).to(device)


def _loss(out: Tensor, y: Tensor, regression: bool) -> Tensor:
    return F.mse_loss(out.squeeze(-1), y.float()) if regression else F.cross_entropy(out, y)


def _fit(model: Callable[[Inputs], Tensor], params: list[nn.Parameter], x: Inputs, y: Tensor, *, steps: int, lr: float,
         regression: bool, weight_decay: float = 0.0, stop_loss: float = 0.0) -> int:
    """Full-batch Adam on (x, y) for at most ``steps`` steps, stopping once the loss is below
    ``stop_loss`` (the support set is fitted); returns the steps taken."""
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = _loss(model(x), y, regression)
        if float(loss.detach()) < stop_loss:
            return step
        loss.backward()
        optimizer.step()
    return steps


def _check_fit(steps: int, lr: float, stop_loss: float) -> None:
    if steps < 0 or not lr > 0 or not stop_loss >= 0:
        raise ValueError(f"fitting needs steps >= 0, lr > 0 and stop_loss >= 0; got {steps}, {lr}, {stop_loss}")


def _predictor(model: nn.Module, regression: bool) -> Predictor:
    model.eval()

    def predict(query_x: Inputs) -> Tensor:
        with torch.no_grad():
            out = model(query_x)
        return out.squeeze(-1) if regression else out

    return predict


class FromScratch:
    """A fresh backbone + linear head trained on the support set alone: full-batch Adam for at
    most ``steps`` steps, until the support loss is below ``stop_loss`` (0: all the steps)."""

    name = "from_scratch"

    def __init__(self, backbone_factory: BackboneFactory, n_way: int | None, *, steps: int = 100, lr: float = 1e-2,
                 weight_decay: float = 0.0, stop_loss: float = 0.0):
        _check_fit(steps, lr, stop_loss)
        self.backbone_factory, self.n_way = backbone_factory, n_way
        self.steps, self.lr, self.weight_decay, self.stop_loss = steps, lr, weight_decay, stop_loss

    def adapt(self, support_x: Inputs, support_y: Tensor) -> Predictor:
        regression = self.n_way is None
        backbone = self.backbone_factory().to(support_y.device)
        model = BackboneAndHead(backbone, _head_for(backbone, support_x, 1 if regression else self.n_way))
        model.train()
        _fit(model, list(model.parameters()), support_x, support_y, steps=self.steps, lr=self.lr,
             regression=regression, weight_decay=self.weight_decay, stop_loss=self.stop_loss)
        return _predictor(model, regression)


class PretrainFineTune:
    """Pretrain on all meta-train data, then fit a new head per episode on its support set.

    ``train_y`` holds class indices ``0..C-1`` over all meta-train classes (classification) or
    float targets (``n_way=None``, regression). ``finetune="head"`` trains only the new head on
    frozen features; ``"all"`` fine-tunes a copy of the whole pretrained network; either fit stops
    early once the support loss is below ``stop_loss``.
    """

    name = "pretrain_finetune"

    def __init__(self, backbone_factory: BackboneFactory, n_way: int | None, train_x: Inputs, train_y: Tensor, *,
                 pretrain_steps: int = 500, batch_size: int = 64, lr: float = 1e-3, finetune_steps: int = 100,
                 finetune_lr: float = 1e-2, finetune: str = "head", device: str | torch.device = "cpu", seed: int = 0,
                 stop_loss: float = 0.0):
        if finetune not in ("head", "all"):
            raise ValueError(f"finetune must be 'head' or 'all', got {finetune!r}")
        _check_fit(finetune_steps, finetune_lr, stop_loss)
        if _count(train_x) != train_y.shape[0] or train_y.dim() != 1:
            raise ValueError(f"pretraining inputs ({_count(train_x)} rows) and labels {tuple(train_y.shape)} "
                             "must have one label per row")
        if n_way is not None and train_y.is_floating_point():
            raise ValueError("classification pretraining needs integer class labels")
        self.backbone_factory, self.n_way = backbone_factory, n_way
        self.device = torch.device(device)
        self.train_x, self.train_y = _to(train_x, self.device), train_y.to(self.device)
        self.pretrain_steps, self.batch_size, self.lr, self.seed = pretrain_steps, batch_size, lr, seed
        self.finetune_steps, self.finetune_lr, self.finetune = finetune_steps, finetune_lr, finetune
        self.stop_loss = stop_loss
        self.network: BackboneAndHead | None = None
        self.pretrain_losses: list[float] = []

    @property
    def regression(self) -> bool:
        return self.n_way is None

    def pretrain(self) -> BackboneAndHead:
        """Train backbone + head on minibatches of all meta-train data (once; later calls return it).

        Its initial weights and minibatches come from ``seed`` alone (the caller's torch RNG is
        left as it was), so every process that pretrains gets the same network whenever it does.
        """
        if self.network is not None:
            return self.network
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return self._pretrain()

    def _pretrain(self) -> BackboneAndHead:
        generator = torch.Generator().manual_seed(self.seed)
        backbone = self.backbone_factory().to(self.device)
        outputs = 1 if self.regression else int(self.train_y.max()) + 1
        network = BackboneAndHead(backbone, _head_for(backbone, _rows(self.train_x, torch.arange(2)), outputs))
        network.train()
        optimizer = torch.optim.Adam(network.parameters(), lr=self.lr)
        n = self.train_y.shape[0]
        for _ in range(self.pretrain_steps):
            index = torch.randint(n, (min(self.batch_size, n),), generator=generator).to(self.device)
            optimizer.zero_grad(set_to_none=True)
            loss = _loss(network(_rows(self.train_x, index)), self.train_y[index], self.regression)
            loss.backward()
            optimizer.step()
            self.pretrain_losses.append(float(loss.detach()))
        network.eval()
        self.network = network
        return network

    def adapt(self, support_x: Inputs, support_y: Tensor) -> Predictor:
        network = self.pretrain()
        outputs = 1 if self.regression else self.n_way
        if self.finetune == "all":
            backbone = copy.deepcopy(network.backbone)
            model = BackboneAndHead(backbone, _head_for(backbone, support_x, outputs))
            model.train()
            _fit(model, list(model.parameters()), support_x, support_y, steps=self.finetune_steps,
                 lr=self.finetune_lr, regression=self.regression, stop_loss=self.stop_loss)
            return _predictor(model, self.regression)
        with torch.no_grad():
            features = network.features(support_x)
        head = nn.Linear(features.shape[1], outputs).to(features.device)
        _fit(head, list(head.parameters()), features, support_y, steps=self.finetune_steps, lr=self.finetune_lr,
             regression=self.regression, stop_loss=self.stop_loss)
        model = BackboneAndHead(network.backbone, head)
        return _predictor(model, self.regression)
