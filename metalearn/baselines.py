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
from metalearn.stacked import Stacked, can_stack, fit_stacked, stack_parameters, stacked_features, stacked_head

BackboneFactory = Callable[[], nn.Module]
StackedPredictor = Callable[[Inputs], Tensor]  # query inputs [E, Q, ...] -> outputs [E, Q, K] (or [E, Q])
EPISODES_PER_BATCH = 256  # MLPs, and the fine-tune heads: overhead-bound, stacking wins
# Conv nets fit one episode at a time unless ``episodes_per_batch`` says otherwise: on this 2-core CPU
# (torch 2.13) a grouped convolution over 16 stacked episodes (conv4 hidden 32, 15 64x64 cases each)
# took 1.8x the CPU time of 16 separate ones, forward and backward (bench/evaluation.py's notes), and a
# conv step is compute-bound, so the loop's per-step overhead is small beside it.


def _seed_episode(seed: int | None, device: torch.device) -> None:
    """Seed the torch RNG as ``metalearn.evaluation`` does before an episode (None: leave it)."""
    if seed is not None:
        (torch.manual_seed if device.type != "cpu" else torch.default_generator.manual_seed)(seed)


def _episode(x: Inputs, e: int) -> Inputs:
    return {k: v[e] for k, v in x.items()} if isinstance(x, dict) else x[e]


def _has_conv(backbone: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in backbone.modules())


def _stacked_predictor(forward: Callable[[Stacked, Inputs], Tensor], params: Stacked, regression: bool
                       ) -> StackedPredictor:
    def predict(query_x: Inputs) -> Tensor:
        with torch.no_grad():
            out = forward(params, query_x)
        return out.squeeze(-1) if regression else out

    return predict


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
    like = next(backbone.parameters())
    return nn.Linear(width, outputs).to(device=like.device, dtype=like.dtype)


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
                 weight_decay: float = 0.0, stop_loss: float = 0.0, stacked: bool = True,
                 episodes_per_batch: int | None = None):
        _check_fit(steps, lr, stop_loss)
        self.backbone_factory, self.n_way = backbone_factory, n_way
        self.steps, self.lr, self.weight_decay, self.stop_loss = steps, lr, weight_decay, stop_loss
        self.stacked, self.episodes_per_batch = stacked, episodes_per_batch
        self._template: nn.Module | None = None

    def _architecture(self) -> nn.Module:
        if self._template is None:
            with torch.random.fork_rng(devices=[]):  # the caller's RNG is left as it was
                self._template = self.backbone_factory()
        return self._template

    def episodes_at_once(self) -> int:
        """Episodes fitted at once by ``adapt_many`` (0: this backbone has no stacked form, use ``adapt``)."""
        template = self._architecture()
        if not self.stacked or not can_stack(template):
            return 0
        if self.episodes_per_batch:
            return self.episodes_per_batch
        return 0 if _has_conv(template) else EPISODES_PER_BATCH  # conv: see EPISODES_PER_BATCH

    def adapt_many(self, support_x: Inputs, support_y: Tensor, seeds: list[int | None]) -> StackedPredictor:
        """``adapt`` of E episodes at once (``support_x [E, N, ...]``), episode e's fresh network drawn
        right after seeding the RNG with ``seeds[e]`` as ``adapt`` would be: the same networks, fitted
        together (``metalearn.stacked.fit_stacked``). Returns query ``[E, Q, ...]`` -> ``[E, Q, K]``."""
        regression, outputs = self.n_way is None, 1 if self.n_way is None else self.n_way
        device = support_y.device
        models = []
        for seed in seeds:
            _seed_episode(seed, device)
            backbone = self.backbone_factory().to(device)
            like = next(backbone.parameters())
            head = nn.Linear(backbone.out_features, outputs).to(device=like.device, dtype=like.dtype)
            models.append(BackboneAndHead(backbone, head))
        template = models[0].backbone

        def forward(params: Stacked, x: Inputs) -> Tensor:
            return stacked_head(params, stacked_features(template, params, x))

        params, _ = fit_stacked(forward, stack_parameters(models), support_x, support_y, steps=self.steps, lr=self.lr,
                                regression=regression, weight_decay=self.weight_decay, stop_loss=self.stop_loss)
        return _stacked_predictor(forward, params, regression)

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
                 stop_loss: float = 0.0, stacked: bool = True, episodes_per_batch: int | None = None):
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
        self.stacked, self.episodes_per_batch = stacked, episodes_per_batch
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
        head = nn.Linear(features.shape[1], outputs).to(device=features.device, dtype=features.dtype)
        _fit(head, list(head.parameters()), features, support_y, steps=self.finetune_steps, lr=self.finetune_lr,
             regression=self.regression, stop_loss=self.stop_loss)
        model = BackboneAndHead(network.backbone, head)
        return _predictor(model, self.regression)

    def episodes_at_once(self) -> int:
        """Episodes fitted at once by ``adapt_many`` (0: no stacked form for this backbone, use ``adapt``)."""
        if not self.stacked:
            return 0
        network = self.pretrain()
        if self.finetune == "head":  # features once per episode; the heads are the stacked part
            return self.episodes_per_batch or EPISODES_PER_BATCH
        if not can_stack(network.backbone):
            return 0
        if self.episodes_per_batch:
            return self.episodes_per_batch
        return 0 if _has_conv(network.backbone) else EPISODES_PER_BATCH  # conv: see EPISODES_PER_BATCH

    def adapt_many(self, support_x: Inputs, support_y: Tensor, seeds: list[int | None]) -> StackedPredictor:
        """``adapt`` of E episodes at once (``support_x [E, N, ...]``): episode e's fresh head is drawn
        right after seeding the RNG with ``seeds[e]``, as ``adapt`` draws it, and the E heads (or
        networks, ``finetune="all"``) are fitted together (``metalearn.stacked.fit_stacked``).
        Returns query ``[E, Q, ...]`` -> ``[E, Q, K]``."""
        network = self.pretrain()
        outputs = 1 if self.regression else self.n_way
        like = next(network.parameters())
        count = len(seeds)
        if self.finetune == "all":
            heads = []
            for seed in seeds:
                _seed_episode(seed, like.device)
                heads.append(nn.Linear(network.backbone.out_features, outputs).to(device=like.device, dtype=like.dtype))
            pretrained = {"backbone." + k: v.detach().expand(count, *v.shape).clone()
                          for k, v in network.backbone.named_parameters()}
            params = {**pretrained, **{"head." + k: v for k, v in stack_parameters(heads).items()}}
            template = network.backbone

            def forward(p: Stacked, x: Inputs) -> Tensor:
                return stacked_head(p, stacked_features(template, p, x))

            fitted, _ = fit_stacked(forward, params, support_x, support_y, steps=self.finetune_steps,
                                    lr=self.finetune_lr, regression=self.regression, stop_loss=self.stop_loss)
            return _stacked_predictor(forward, fitted, self.regression)

        def features(x: Inputs) -> Tensor:  # each episode's set through the shared network, alone (set norm)
            with torch.no_grad():
                return torch.stack([network.features(_episode(x, e)) for e in range(count)])

        support = features(support_x)
        heads = []
        for seed in seeds:
            _seed_episode(seed, like.device)
            heads.append(nn.Linear(support.shape[-1], outputs).to(device=support.device, dtype=support.dtype))
        head_forward = lambda p, f: stacked_head(p, f, prefix="")  # noqa: E731
        fitted, _ = fit_stacked(head_forward, stack_parameters(heads), support, support_y,
                                steps=self.finetune_steps, lr=self.finetune_lr, regression=self.regression,
                                stop_loss=self.stop_loss)
        fit_heads = _stacked_predictor(head_forward, fitted, self.regression)
        return lambda query_x: fit_heads(features(query_x))
