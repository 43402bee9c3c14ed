"""medmeta's metalearn package: see the README's layout tour."""

from metalearn.backbones import MLP, Backbone, Conv4, Fusion, build_backbone
from metalearn.episodes import DivergenceError, EpisodeError, Episodes
from metalearn.learner import AdaptedStateError, MetaLearner, StepMetrics
from metalearn.registry import LEARNERS, build_learner

__all__ = ["MLP", "Backbone", "Conv4", "Fusion", "build_backbone", "DivergenceError", "EpisodeError", "Episodes",
           "AdaptedStateError", "MetaLearner", "StepMetrics", "LEARNERS", "build_learner"]
