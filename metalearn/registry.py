"""``build_learner(name, backbone, **config)``: the algorithms by name."""

from __future__ import annotations

import inspect

from metalearn.backbones import Backbone
from metalearn.learner import MetaLearner
from metalearn.maml import MAML
from metalearn.metric import MatchingNet, ProtoNet
from metalearn.reptile import Reptile

LEARNERS = {
    "maml": (MAML, {"first_order": False}),
    "fomaml": (MAML, {"first_order": True}),
    "reptile": (Reptile, {}),
    "protonet": (ProtoNet, {}),
    "matchingnet": (MatchingNet, {}),
}


def build_learner(name: str, backbone: Backbone, **config) -> MetaLearner:
    """A learner by name (see LEARNERS) around ``backbone``; ``config`` are its constructor's
    keyword arguments, refused by name when unknown."""
    if name not in LEARNERS:
        raise ValueError(f"unknown algorithm {name!r}: expected one of {', '.join(LEARNERS)}")
    cls, fixed = LEARNERS[name]
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self", "backbone"} - set(fixed)
    unknown = set(config) - allowed
    if unknown:
        raise ValueError(f"{name} does not take {sorted(unknown)}; it takes {sorted(allowed)}")
    return cls(backbone, **{**config, **fixed})
