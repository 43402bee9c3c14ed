"""Backbones: the networks every algorithm adapts, written as pure functions of a parameter dict.

Each backbone is an ``nn.Module`` (so it initialises, moves and saves like one) whose
``functional(params, x, plain_norm=False)`` is a pure function of ``params`` (keyed like
``named_parameters()``) and one set of inputs ``[N, *features]``; ``forward(x)`` calls it with
the module's own parameters. ``out_features`` is the embedding width.

Normalisation is batch norm over the set being embedded (one task's support set, or its query
set): transductive, no running statistics, no buffers. ``nn.BatchNorm2d`` is never used: its
second-order gradient under ``torch.func.vmap`` is wrong in torch 2.13
(/work/shared/notes/meta-learning-baselines.md). ``plain_norm=True`` writes batch norm with
mean/var ops, exact under vmap; ``False`` uses the native kernel (faster, exact outside vmap).
Because of it a conv4 with batch norm embeds a set, not each case on its own
(``normalises_over_set``): its outputs for part of a set differ from the same cases' outputs in the
whole set. ``lean=True`` (a meta-step's query forward on the loop strategy, differentiated once) runs
each batch-norm block as lean.set_norm_block: the same function, less kept for backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalearn.episodes import Inputs
from metalearn import nhwc as nhwc_path
from metalearn.lean import set_norm_block

Params = dict[str, Tensor]


def batch_norm(x: Tensor, weight: Tensor, bias: Tensor, plain: bool, eps: float = 1e-5) -> Tensor:
    """Batch norm over dims 0, 2, 3, ... with this batch's statistics (biased variance)."""
    if not plain:
        return F.batch_norm(x, None, None, weight, bias, training=True, eps=eps)
    dims = [0, *range(2, x.dim())]
    mean = x.mean(dims, keepdim=True)
    var = (x - mean).square().mean(dims, keepdim=True)
    shape = [1, -1] + [1] * (x.dim() - 2)
    return (x - mean) * torch.rsqrt(var + eps) * weight.view(shape) + bias.view(shape)


def linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``F.linear``, or with a leading task dimension on the weights (``[T, out, in]``) one
    batched matrix product per task (x ``[T, N, in]``)."""
    if weight.dim() == 2:
        return F.linear(x, weight, bias)
    return torch.baddbmm(bias.unsqueeze(-2), x, weight.transpose(-1, -2))


class Backbone(nn.Module):
    out_features: int

    @property
    def case_shape(self):
        """The shape of one case's input (a dict of them for fused inputs), or None when any goes."""
        return None

    @property
    def normalises_over_set(self) -> bool:
        """Whether a case's output depends on the other cases of its set (batch norm over the set),
        so that a set cannot be embedded in parts."""
        return False

    def functional(self, params: Params, x: Inputs, plain_norm: bool = False, prefix: str = "",
                   lean: bool = False) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Inputs) -> Tensor:
        return self.functional(dict(self.named_parameters()), x)


class _Affine(nn.Module):
    """The learned scale and shift of a norm layer (no running statistics)."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, norm: bool):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm = _Affine(cout) if norm else None


class Conv4(Backbone):
    """The standard 4-block conv net: [3x3 conv, batch norm, ReLU, 2x2 max-pool] x 4, flattened
    (the pool runs before the ReLU: the same function; NHWC on CPU in float32, metalearn/nhwc.py).

    ``image_size`` 28 gives a 64-wide embedding (28-14-7-3-1), 64 gives 1024 (64-32-16-8-4).
    """

    def __init__(self, in_channels: int = 1, hidden: int = 64, image_size: int = 28, norm: str = "batch"):
        super().__init__()
        if norm not in ("batch", "none"):
            raise ValueError(f"conv4 norm must be 'batch' or 'none', got {norm!r}")
        self.in_channels, self.image_size, self.norm = in_channels, image_size, norm
        self.blocks = nn.ModuleList([_Block(in_channels if i == 0 else hidden, hidden, norm == "batch")
                                     for i in range(4)])
        side = image_size
        for _ in range(4):
            side //= 2
        if side < 1:
            raise ValueError(f"conv4 needs images of at least 16 pixels a side, got {image_size}")
        self.out_features = hidden * side * side

    @property
    def case_shape(self) -> tuple[int, ...]:
        return (self.in_channels, self.image_size, self.image_size)

    @property
    def normalises_over_set(self) -> bool:
        return self.norm == "batch"

    def functional(self, params: Params, x: Tensor, plain_norm: bool = False, prefix: str = "",
                   lean: bool = False) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"conv4 expects images [N, {self.in_channels}, H, W], got {tuple(x.shape)}")
        lean = lean and not plain_norm and not torch.is_autocast_enabled(x.device.type)
        nhwc = (not lean and not plain_norm and nhwc_path.pays(x)  # CPU float32: metalearn/nhwc.py
                and not torch.is_autocast_enabled(x.device.type))
        if nhwc:
            x = nhwc_path.channels_last(x)
        for i, block in enumerate(self.blocks):
            p = f"{prefix}blocks.{i}."
            if lean and block.norm is not None:
                x = set_norm_block(x, params[p + "conv.weight"], params[p + "conv.bias"],
                                   params[p + "norm.weight"], params[p + "norm.bias"])
                continue
            weight = params[p + "conv.weight"]
            x = F.conv2d(x, nhwc_path.channels_last(weight) if nhwc else weight, params[p + "conv.bias"], padding=1)
            if block.norm is not None and nhwc:
                x = nhwc_path.batch_norm(x, params[p + "norm.weight"], params[p + "norm.bias"])
            elif block.norm is not None:
                x = batch_norm(x, params[p + "norm.weight"], params[p + "norm.bias"], plain_norm)
            # the pool before the ReLU: max commutes with it, so values and gradients are the same, and
            # the ReLU and its backward run at a quarter of the size
            x = F.relu(F.max_pool2d(x, 2))
        return x.flatten(1)


class MLP(Backbone):
    """Linear layers with ReLU between and after them; ``MLP(1, (40, 40))`` plus a 1-wide head is
    the sinusoid net 1-40-40-1. Its functional form also takes per-task weights ``[T, out, in]``
    with inputs ``[T, N, in]`` (the "batched" strategy in batching.py)."""

    def __init__(self, in_features: int, hidden: tuple[int, ...] | list[int] = (40, 40)):
        super().__init__()
        if not hidden:
            raise ValueError("an MLP needs at least one hidden layer")
        sizes = [in_features, *hidden]
        self.in_features = in_features
        self.layers = nn.ModuleList([nn.Linear(a, b) for a, b in zip(sizes, sizes[1:])])
        self.out_features = sizes[-1]
        self._keys = [(f"layers.{i}.weight", f"layers.{i}.bias") for i in range(len(self.layers))]

    @property
    def case_shape(self) -> tuple[int, ...]:
        return (self.in_features,)

    def functional(self, params: Params, x: Tensor, plain_norm: bool = False, prefix: str = "",
                   lean: bool = False) -> Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"mlp expects {self.in_features} features, got shape {tuple(x.shape)}")
        for w, b in self._keys:
            x = F.relu(linear(x, params[prefix + w], params[prefix + b]))
        return x


class Fusion(Backbone):
    """An image (conv4) and a record vector (MLP) embedded together: the two embeddings
    concatenated. Inputs are ``{"image": [N, C, H, W], "record": [N, F]}``."""

    def __init__(self, image: Conv4, record: MLP):
        super().__init__()
        self.image, self.record = image, record
        self.out_features = image.out_features + record.out_features

    @property
    def case_shape(self) -> dict[str, tuple[int, ...]]:
        return {"image": self.image.case_shape, "record": self.record.case_shape}

    @property
    def normalises_over_set(self) -> bool:
        return self.image.normalises_over_set or self.record.normalises_over_set

    def functional(self, params: Params, x: dict[str, Tensor], plain_norm: bool = False, prefix: str = "",
                   lean: bool = False) -> Tensor:
        if not isinstance(x, dict) or set(x) != {"image", "record"}:
            got = sorted(x) if isinstance(x, dict) else type(x).__name__
            raise ValueError(f"fusion expects a dict with 'image' and 'record', got {got}")
        return torch.cat([self.image.functional(params, x["image"], plain_norm, prefix + "image.", lean),
                          self.record.functional(params, x["record"], plain_norm, prefix + "record.", lean)], dim=-1)


class WithHead(Backbone):
    """A backbone followed by a linear head of ``outputs`` units (MAML-family learners)."""

    def __init__(self, backbone: Backbone, outputs: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.out_features, outputs)
        self.out_features = outputs

    @property
    def case_shape(self):
        return self.backbone.case_shape

    @property
    def normalises_over_set(self) -> bool:
        return self.backbone.normalises_over_set

    def functional(self, params: Params, x: Inputs, plain_norm: bool = False, prefix: str = "",
                   lean: bool = False) -> Tensor:
        z = self.backbone.functional(params, x, plain_norm, prefix + "backbone.", lean)
        return linear(z, params[prefix + "head.weight"], params[prefix + "head.bias"])


def build_backbone(name: str, **config) -> Backbone:
    """``conv4`` (in_channels, hidden, image_size, norm), ``mlp`` (in_features, hidden) or
    ``fusion`` (image: dict of conv4 config, record: dict of mlp config)."""
    if name == "conv4":
        return Conv4(**config)
    if name == "mlp":
        return MLP(**config)
    if name == "fusion":
        unknown = set(config) - {"image", "record"}
        if unknown:
            raise ValueError(f"fusion takes 'image' and 'record' configs, got unknown {sorted(unknown)}")
        return Fusion(Conv4(**config.get("image", {})), MLP(**config["record"]))
    raise ValueError(f"unknown backbone {name!r}: expected conv4, mlp or fusion")
