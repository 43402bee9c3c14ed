"""metalearn's episodic meta-learners (MAML, FOMAML, Reptile, ProtoNet, Matching Networks) on compounds: the
``compounds`` input kind of ``train.backbone`` (issue 15, item 2).

    train_episodic_model(home, taskset, algorithm, settings, on_checkpoint=None) -> TrainedActivity
    load_episodic(folder, device="cpu") -> (learner, InputScaling)
    episodic_method(learner, scaling, featuriser, note, device="cpu") -> medmeta.chem.evaluation.Method
    meta_train(identity, tasks, device, checkpoint_dir=None, ...) -> (learner, InputScaling, TrainResult, replaced)
    learner_method(identity, note, device="cpu") -> Method (meta-trains per split: for bench/molecules.py)
    conditioned(learner, scaling, support_x, support_y, device="cpu") -> fn(query_x) -> P(active) (numpy)
    learner_from_card(config, weights) -> (learner, InputScaling)

- Inputs: the rows of ``train.backbone.compounds.featuriser`` (``medmeta.chem.features``; the same per-snapshot
  ``FeatureCache`` as ActivityGP's) through ``InputScaling``: a bit featuriser's 0/1 columns as they are; any
  other (``descriptors``, ``ecfp4_counts``) standardised with the mean and standard deviation of the meta-train
  tasks' rows (a constant column: divided by 1), a value that is not finite replaced by the mean (0 after
  scaling) and counted, and every scaled value clipped to +-``CLIP``. The scaling is part of the model: its
  tensors ``input_scaling.mean`` / ``input_scaling.std`` are saved in ``weights.safetensors`` beside the
  learner's state dict, and published with it, so predict scales a library exactly as training did.
- Network: ``metalearn.build_backbone("mlp", in_features=<the featuriser's width>, hidden=...)`` wrapped by
  ``metalearn.build_learner(algorithm, ..., n_way=2, **train.learner[algorithm])``: the spec is the one
  ``medmeta.training.models.build_learner`` rebuilds (``{"algorithm", "backbone": {"name": "mlp", "config"},
  "learner", "n_way": 2}``).
- Episodes (``CompoundEpisodes``, a pure function of (seed, step)): ``compounds.episodic.meta_batch`` tasks a
  step, drawn with replacement from the train tasks large enough for S; S drawn from ``compounds.support_sizes``;
  the support is the FS-Mol protocol's draw (S/2 actives + S/2 inactives, ``medmeta.chem.protocol.draw``), the
  query ``compounds.episodic.query_size`` of the task's other compounds (fewer when a drawn task has fewer).
- Training: ``metalearn.trainer.Trainer`` (Adam, ``compounds.episodic.lr``, ``steps``), checkpointed in
  safetensors every ``compounds.checkpoint_every`` steps under ``checkpoint/``, resumed to the same weights; the
  model folder and its name (``<task set>-<algorithm>-<digest>``) come from ``medmeta.chem.training``: the same
  identity finds the trained model, not retrains it.
- Scores (dAUPRC, predict): the learner adapted on the support set, softmax of its two logits, the probability
  of the active class.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from medmeta.errors import MedmetaError
from medmeta.home import Home
from medmeta.training.runs import read_json, write_json

EPISODIC = ("maml", "fomaml", "reptile", "protonet", "matchingnet")  # metalearn.LEARNERS, as compound learners
NAMES = {"maml": "MAML", "fomaml": "first-order MAML", "reptile": "Reptile", "protonet": "ProtoNet",
         "matchingnet": "Matching Networks"}
SCALING = "input_scaling."  # the scaling's tensors in weights.safetensors (and a published model's weights)
CLIP = 10.0  # standardised values are clipped to +-CLIP (a descriptor far outside the meta-train range)
WEIGHTS = "weights.safetensors"


# -- the inputs ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class InputScaling:
    """How a featuriser's rows enter the network: as they are (``mean is None``: 0/1 bits), or standardised with
    the meta-train rows' ``mean``/``std`` (float32, one per column), non-finite values set to the mean, clipped."""

    mean: np.ndarray | None = None
    std: np.ndarray | None = None

    @classmethod
    def fit(cls, featuriser: str, rows: np.ndarray) -> "InputScaling":
        """Identity for a bit featuriser; else the finite values' mean and standard deviation per column (a
        column without spread, or without a finite value, gets std 1)."""
        from medmeta.chem.features import BIT_FEATURISERS

        if featuriser in BIT_FEATURISERS:
            return cls()
        values = np.asarray(rows, dtype=np.float64)
        finite = np.isfinite(values)
        count = finite.sum(0)
        safe = np.where(finite, values, 0.0)
        mean = np.divide(safe.sum(0), count, out=np.zeros(values.shape[1]), where=count > 0)
        var = np.divide((np.where(finite, values - mean, 0.0) ** 2).sum(0), count, out=np.zeros(values.shape[1]),
                        where=count > 0)
        std = np.sqrt(var)
        std = np.where(np.isfinite(std) & (std > 1e-12), std, 1.0)
        return cls(mean.astype(np.float32), std.astype(np.float32))

    @property
    def standardises(self) -> bool:
        return self.mean is not None

    def apply(self, rows: np.ndarray) -> tuple[np.ndarray, int]:
        """(float32 rows the network takes, how many values were not finite and set to the mean)."""
        x = np.asarray(rows, dtype=np.float32)
        bad = ~np.isfinite(x)
        replaced = int(bad.sum())
        if not self.standardises:
            return (np.where(bad, 0.0, x).astype(np.float32) if replaced else x), replaced
        with np.errstate(invalid="ignore", over="ignore"):
            z = (x - self.mean) / self.std
        z[bad] = 0.0
        return np.clip(z, -CLIP, CLIP).astype(np.float32), replaced

    def tensors(self) -> dict:
        """``input_scaling.mean`` / ``.std`` (torch, float32); nothing for the identity."""
        import torch

        if not self.standardises:
            return {}
        return {f"{SCALING}mean": torch.from_numpy(self.mean.copy()), f"{SCALING}std": torch.from_numpy(self.std.copy())}

    @classmethod
    def split(cls, state: dict) -> tuple["InputScaling", dict]:
        """(the scaling, the learner's state dict) of a saved weights dict."""
        rest = {k: v for k, v in state.items() if not k.startswith(SCALING)}
        if f"{SCALING}mean" not in state:
            return cls(), rest
        return cls(state[f"{SCALING}mean"].cpu().numpy().astype(np.float32),
                   state[f"{SCALING}std"].cpu().numpy().astype(np.float32)), rest

    def describe(self) -> dict:
        if not self.standardises:
            return {"kind": "none", "why": "0/1 bits enter as they are"}
        return {"kind": "standardised", "fitted_on": "the meta-train tasks' rows", "clip": CLIP,
                "non_finite": "set to the meta-train mean (0 after scaling), counted"}


# -- the model's identity ----------------------------------------------------------------------------

def episodic_spec(algorithm: str, featuriser: str, backbone: dict, learner: dict) -> dict:
    """The spec ``medmeta.training.models.build_learner`` rebuilds: an MLP over the featuriser's columns with
    ``backbone["hidden"]``, ``algorithm`` with ``learner`` (``train.learner[algorithm]``), two ways."""
    from medmeta.chem.features import FEATURISER_BLOCKS, FEATURISERS

    if algorithm not in EPISODIC:
        raise MedmetaError(f"{algorithm!r} is not an episodic learner; known: {', '.join(EPISODIC)}")
    if featuriser not in FEATURISERS:
        raise MedmetaError(f"train.backbone.compounds.featuriser {featuriser!r} is not a featuriser; "
                           f"known: {', '.join(FEATURISERS)}")
    width = sum(FEATURISER_BLOCKS[featuriser])
    return {"algorithm": algorithm, "backbone": {"name": "mlp", "config": {"in_features": width,
                                                                          "hidden": [int(h) for h in backbone["hidden"]]}},
            "learner": dict(learner or {}), "n_way": 2}


def episodic_identity(manifest: dict, algorithm: str, settings) -> dict:
    """What makes a trained episodic compound model: the task set, the spec, the featuriser, the episodes, the
    optimiser, steps and seed (``compounds.checkpoint_every`` and ``device`` do not change the weights)."""
    from medmeta.chem.training import taskset_identity

    compounds, backbone = settings.compounds, settings.train["backbone"].get("compounds")
    if backbone is None:
        raise MedmetaError("train.backbone.compounds is not set: the episodic learners need it")
    episodic = compounds["episodic"]
    featuriser = str(backbone["featuriser"])
    return {"taskset": taskset_identity(manifest), "learner": algorithm,
            "spec": episodic_spec(algorithm, featuriser, backbone, settings.train["learner"].get(algorithm)),
            "featuriser": featuriser, "threshold": (manifest.get("threshold") or {}).get("value"),
            "episodes": {"support_sizes": [int(s) for s in compounds["support_sizes"]],
                         "query_size": int(episodic["query_size"]), "meta_batch": int(episodic["meta_batch"])},
            "optimiser": {"name": "adam", "lr": float(episodic["lr"])},
            "steps": int(episodic["steps"]), "seed": int(compounds["seed"])}


def build_episodic(spec: dict):
    """The untrained learner of a spec (``medmeta.training.models.build_learner``)."""
    from medmeta.training.models import build_learner

    return build_learner(spec)


# -- episodes -----------------------------------------------------------------------------------------

class CompoundEpisodes:
    """Binary training episodes over in-memory tasks ``[(x float32, y int64)]``: ``sample(step)`` is a pure
    function of (seed, step), so a resumed run sees the episodes an uninterrupted one would."""

    def __init__(self, tasks: list[tuple[np.ndarray, np.ndarray]], support_sizes: list[int], query_size: int,
                 meta_batch: int, seed: int, taskset: str = "the task set"):
        from medmeta.chem.training import drawable

        self.tasks, self.query_size, self.meta_batch, self.seed = tasks, int(query_size), int(meta_batch), int(seed)
        self.eligible = {int(s): [i for i, (_, y) in enumerate(tasks) if drawable(y, int(s))] for s in support_sizes}
        self.sizes = [s for s, ids in self.eligible.items() if ids]
        if not self.sizes:
            raise MedmetaError(f"{taskset}: no meta-training task has S/2 + 1 compounds of each class for a support "
                               f"of {min(int(s) for s in support_sizes)} and a query")

    def sample(self, step: int):
        import torch

        from medmeta.chem.protocol import draw
        from metalearn.episodes import Episodes

        rng = np.random.default_rng([self.seed, int(step), 15])
        size = self.sizes[int(rng.integers(len(self.sizes)))]
        picks = [self.eligible[size][int(i)] for i in rng.integers(len(self.eligible[size]), size=self.meta_batch)]
        query_size = min([self.query_size] + [len(self.tasks[i][1]) - size for i in picks])
        parts = []
        for i in picks:
            x, y = self.tasks[i]
            support, rest = draw(y, size, rng)
            query = rng.choice(rest, query_size, replace=False)
            parts.append((x[support], y[support], x[query], y[query]))
        stacked = [torch.from_numpy(np.stack([p[k] for p in parts])) for k in range(4)]
        return Episodes(stacked[0], stacked[1].long(), stacked[2], stacked[3].long(), n_way=2)


# -- training -----------------------------------------------------------------------------------------

def train_episodic_model(home: Home, taskset: str, algorithm: str, settings,
                         on_checkpoint: Callable[[int], None] | None = None):
    """Meta-train (or resume, or find) ``algorithm`` on target task set ``taskset``; a ``TrainedActivity``.

    ``on_checkpoint(step)`` is called at every ``checkpoint_every``-th step (progress; an exception from it
    stops the run after a checkpoint of that step is written, as an interrupt would)."""
    from safetensors.torch import save_file

    from medmeta.atomic import atomic_path
    from medmeta.chem.training import TrainedActivity, start_training, validation_report

    compounds = settings.compounds
    start = start_training(home, taskset, settings, lambda manifest: episodic_identity(manifest, algorithm, settings))
    if isinstance(start, TrainedActivity):
        return start
    tasks, identity, name, folder, train, device, features = start
    featuriser = identity["featuriser"]
    every = int(compounds["checkpoint_every"])

    def progress(report) -> None:
        if on_checkpoint is not None and report.step % every == 0:
            on_checkpoint(report.step)

    resumed_at = 0
    checkpoint = folder / "checkpoint"
    if (checkpoint / "checkpoint.safetensors").is_file():
        from metalearn.checkpoint import read_checkpoint_meta

        resumed_at = int(read_checkpoint_meta(checkpoint / "checkpoint.safetensors").get("step", 0))
    started = time.perf_counter()
    learner, scaling, fitted, replaced = meta_train(
        identity, [(features[t.task], t.labels) for t in train], device, checkpoint_dir=checkpoint,
        checkpoint_every=every, on_step=progress, what=taskset)
    seconds = time.perf_counter() - started
    with atomic_path(folder / WEIGHTS) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in learner.state_dict().items()}
        save_file({**state, **scaling.tensors()}, str(tmp), metadata={"model": name})
    untrained = _untrained(identity, device)
    validation = validation_report(tasks, {t: scaling.apply(x)[0] for t, x in features.items()}, {
        "untrained": episodic_method(untrained, InputScaling(), featuriser, "the starting network", device),
        "meta_trained": episodic_method(learner, InputScaling(), featuriser, "after meta-training", device)}, compounds)
    losses = [h["loss"] for h in fitted.history]
    result = {"model": name, "taskset": taskset, "snapshot": tasks.manifest["snapshot"], "learner": algorithm,
              "featuriser": featuriser, "scaling": scaling.describe(), "non_finite_replaced": replaced,
              "steps": int(fitted.steps), "resumed_at": resumed_at, "device": str(fitted.device),
              "seconds": round(seconds, 3), "loss_first10": _mean(losses[:10]), "loss_last10": _mean(losses[-10:]),
              "history": fitted.history, "train_tasks": [t.task for t in train], "validation": validation}
    write_json(folder / "result.json", result)
    return TrainedActivity(name, folder, False, int(fitted.steps), round(seconds, 3), str(fitted.device))


def meta_train(identity: dict, tasks: list[tuple[np.ndarray, np.ndarray]], device: str = "cpu",
               checkpoint_dir: Path | None = None, checkpoint_every: int = 100, on_step: Callable | None = None,
               what: str = "the task set"):
    """The core of ``train_episodic_model`` without a home: ``identity``'s learner (``spec``, ``featuriser``,
    ``episodes``, ``optimiser``, ``steps``, ``seed``) meta-trained on ``tasks`` (the featuriser's raw rows and 0/1
    labels, numpy) by metalearn's ``Trainer``, resuming from ``checkpoint_dir`` when it holds a checkpoint.
    Returns (learner in eval mode, its ``InputScaling``, the ``TrainResult``, non-finite values replaced)."""
    import torch

    from metalearn.trainer import Trainer

    scaling = InputScaling.fit(identity["featuriser"], np.concatenate([x for x, _ in tasks]))
    data, replaced = [], 0
    for x, y in tasks:
        scaled, bad = scaling.apply(x)
        data.append((scaled, np.asarray(y, dtype=np.int64)))
        replaced += bad
    episodes = identity["episodes"]
    sampler = CompoundEpisodes(data, episodes["support_sizes"], episodes["query_size"], episodes["meta_batch"],
                               identity["seed"], what)
    torch.manual_seed(identity["seed"])  # the initial weights: the same identity, the same model
    learner = build_episodic(identity["spec"])
    trainer = Trainer(learner, sampler.sample, max_steps=identity["steps"], lr=identity["optimiser"]["lr"],
                      checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every, seed=identity["seed"],
                      device=device, config=identity, on_step=on_step)
    fitted = trainer.fit(resume=True)
    return learner.eval(), scaling, fitted, replaced


def learner_method(identity: dict, note: str, device: str = "cpu"):
    """``identity`` (as ``episodic_identity`` makes it; its ``taskset`` is not used) as a method that meta-trains on
    each split's training tasks, seeded by the split's seed: the pipeline's training for a benchmark
    (bench/molecules.py, ``run_protocol``) without a home."""
    from medmeta.chem.evaluation import Method

    def prepare(train, seed: int):
        learner, scaling, _, _ = meta_train({**identity, "seed": int(seed)}, [(t.x, t.y) for t in train], device)
        return episodic_method(learner, scaling, identity["featuriser"], note, device).prepare(train, seed)

    return Method(identity["featuriser"], prepare, note)


def _untrained(identity: dict, device: str):
    import torch

    torch.manual_seed(identity["seed"])
    return build_episodic(identity["spec"]).to(device).eval()


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 6) if values else None


# -- the trained model ----------------------------------------------------------------------------------

def learner_from_weights(spec: dict, state: dict, device: str = "cpu"):
    """(learner with ``state``'s weights, the ``InputScaling`` saved with them)."""
    scaling, weights = InputScaling.split(state)
    learner = build_episodic(spec)
    learner.load_state_dict(weights)
    return learner.to(device).eval(), scaling


def load_episodic(folder: Path, device: str = "cpu"):
    """(the trained learner, its ``InputScaling``) of a model folder."""
    from safetensors.torch import load_file

    identity = read_json(folder / "spec.json", "model spec")
    return learner_from_weights(identity["spec"], load_file(str(folder / WEIGHTS)), device)


def learner_from_card(config: dict, weights: dict, device: str = "cpu"):
    """A published episodic compound model (``card["config"]``: ``learner``, ``spec``) and its weights."""
    return learner_from_weights(config["spec"], weights, device)


def conditioned(learner, scaling: InputScaling, support_x: np.ndarray, support_y: np.ndarray,
                device: str = "cpu") -> Callable[[np.ndarray], np.ndarray]:
    """The learner adapted on the support set (MAML's inner steps need gradients: enabled here); the
    returned ``fn(query_x)`` gives each query compound's probability of the active class (float64)."""
    import torch

    sx = torch.from_numpy(scaling.apply(support_x)[0]).to(device)
    sy = torch.as_tensor(np.asarray(support_y), dtype=torch.int64, device=device)
    with torch.enable_grad():
        predict = learner.adapt(sx, sy)

    def probability(query_x: np.ndarray) -> np.ndarray:
        qx = torch.from_numpy(scaling.apply(query_x)[0]).to(device)
        with torch.no_grad():
            logits = predict(qx).float()
        return torch.softmax(logits, dim=-1)[:, 1].double().cpu().numpy()

    return probability


def episodic_method(learner, scaling: InputScaling, featuriser: str, note: str, device: str = "cpu"):
    """A trained episodic learner as a ``medmeta.chem.evaluation.Method`` (its ``prepare`` ignores the training
    tasks): per draw, adapted on the support set, the query's probability of the active class."""
    from medmeta.chem.evaluation import Method

    def score(support_x, support_y, query_x, draw_index):
        return conditioned(learner, scaling, support_x, support_y, device)(query_x)

    return Method(featuriser, lambda train, seed: score, note)


__all__ = ["CLIP", "EPISODIC", "CompoundEpisodes", "InputScaling", "conditioned", "episodic_identity", "episodic_method",
           "episodic_spec", "learner_from_card", "learner_method", "load_episodic", "meta_train", "train_episodic_model"]
