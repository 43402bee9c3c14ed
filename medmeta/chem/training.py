"""Meta-train the compound-activity learner (``metalearn.activity.ActivityGP``) on a target task set (issue 15).

    train_activity_model(home, taskset, settings, on_checkpoint=None) -> TrainedActivity

- Features: ``settings.compounds["featuriser"]`` (``fingerprints``: ECFP4 | atom pairs | torsions | FCFP4 | MACCS)
  of every compound of the task set, from a ``FeatureCache`` kept with the snapshot the task set was built from
  (``H/features/<snapshot>/``, keyed by the standardised SMILES), so a fingerprint is computed once per compound,
  whichever task sets (split seeds) of that snapshot hold it (``task_features``).
- Meta-training: ``ActivityGP(in_features, blocks=<the featuriser's blocks>, seed, **compounds.learner)`` on the
  task set's ``train`` tasks for ``compounds.steps`` steps, on ``compounds.device`` (``auto``: cuda when present).
- Checkpoints: every ``checkpoint_every`` steps the learner's whole state (weights, Adam's moments, the step) is
  written atomically to ``checkpoint/state.safetensors``; a killed run resumes from it, and because episode ``k`` is
  drawn from (seed, k) only, resuming ends at the same weights as an uninterrupted run.
- Validation: the ``val`` tasks (when the task set has any and ``validation_draws`` > 0) are scored at the gate's
  support size before (the untrained kernel) and after meta-training, on the same draws: the result says whether
  meta-training helped on targets it did not see. It is a report, not model selection (six numbers are learned;
  the last step's weights are the model).
- The model folder ``H/training/<task set>-activity_gp-<digest>/`` (the digest covers the task set's manifest, the
  learner's config, the featuriser, the steps and the seed: the same inputs find the trained model, not retrain it):
  ``spec.json`` (the identity), ``checkpoint/``, ``weights.safetensors`` (the state dict), ``result.json``.

Shared with the episodic learners (``medmeta.chem.episodic``): ``taskset_identity`` (the task set part of a model's
identity), ``compound_model_name`` (``<task set>-<learner>-<digest of the identity>``), ``found_model`` (a finished
model folder), ``train_tasks``, ``task_features`` and ``validation_report`` (untrained against meta-trained on the
val tasks, the same draws).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from medmeta.atomic import atomic_path
from medmeta.errors import MedmetaError
from medmeta.home import Home
from medmeta.training.runs import manifest_digest, model_dir, read_json, write_json

LEARNER = "activity_gp"
CHECKPOINT = "checkpoint/state.safetensors"
WEIGHTS = "weights.safetensors"


@dataclass(frozen=True)
class TrainedActivity:
    """A trained (or found) compound-activity model."""

    model: str  # <task set>-activity_gp-<digest>
    folder: Path
    cached: bool  # found trained, not trained by this call
    steps: int
    seconds: float  # meta-training seconds of the run that finished it
    device: str


def resolve_device(device: str) -> str:
    """``auto``: ``cuda`` when torch sees a GPU, else ``cpu``; anything else as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def features_dir(home: Home, manifest: dict) -> Path:
    """``H/features/<snapshot>/``: the feature cache of a snapshot's compounds, shared by every task set built
    from it (the three split seeds of one snapshot featurise each compound once)."""
    return home.root / "features" / str(manifest["snapshot"])


def task_features(home: Home, tasks, featuriser: str) -> dict[str, np.ndarray]:
    """Task -> its compounds' ``featuriser`` rows (in the task's compound order), from the task set's feature
    cache; every compound featurised once, however many tasks hold it. ``tasks``: a ``TargetTaskSet``."""
    from medmeta.chem.features import FeatureCache

    cache = FeatureCache(features_dir(home, tasks.manifest))
    smiles = sorted({s for task in tasks.tasks.values() for s in task.smiles})
    rows = cache.get(featuriser, smiles)
    index = {s: i for i, s in enumerate(smiles)}
    return {name: rows[[index[s] for s in task.smiles]] for name, task in tasks.tasks.items()}


def learner_config(featuriser: str, compounds: dict) -> dict:
    """``ActivityGP``'s keyword arguments: ``compounds.learner`` with the featuriser's width and blocks and the seed."""
    from medmeta.chem.features import FEATURISER_BLOCKS, FEATURISERS

    if featuriser not in FEATURISERS:
        raise MedmetaError(f"compounds.featuriser {featuriser!r} is not a featuriser; known: {', '.join(FEATURISERS)}")
    blocks = list(FEATURISER_BLOCKS[featuriser])
    from metalearn.activity import ActivityGP

    learner = ActivityGP(sum(blocks), blocks=blocks, seed=int(compounds["seed"]), **dict(compounds["learner"]))
    return learner.config()  # every argument, defaults included: the digest sees them all


def taskset_identity(manifest: dict) -> dict:
    """The task set part of every compound model's identity: its name, snapshot and contents' digest."""
    return {"name": manifest["name"], "snapshot": manifest["snapshot"], "digest": manifest_digest(manifest)}


def activity_identity(manifest: dict, compounds: dict) -> dict:
    """What makes a trained activity model: the task set, the learner's config, the featuriser, steps and seed."""
    featuriser = str(compounds["featuriser"])
    return {"taskset": taskset_identity(manifest), "learner": LEARNER, "learner_config": learner_config(featuriser, compounds), "featuriser": featuriser,
            "threshold": (manifest.get("threshold") or {}).get("value"),
            "steps": int(compounds["steps"]), "seed": int(compounds["seed"])}


def compound_model_name(identity: dict) -> str:
    """``<task set>-<learner>-<digest of the whole identity>``: the same inputs, the same name (found, not retrained)."""
    from medmeta.training.models import spec_digest

    return f"{identity['taskset']['name']}-{identity['learner']}-{spec_digest(identity)}"


activity_model_name = compound_model_name


def found_model(name: str, folder: Path) -> TrainedActivity | None:
    """The finished model in ``folder`` (its ``result.json`` written last), or None when it is not trained yet."""
    if not (folder / "result.json").is_file():
        return None
    result = read_json(folder / "result.json", "training result")
    return TrainedActivity(name, folder, True, int(result["steps"]), float(result["seconds"]), str(result["device"]))


def train_tasks(tasks, taskset: str) -> list:
    """The task set's meta-training tasks; a task set without any is refused naming it."""
    train = tasks.split("train")
    if not train:
        raise MedmetaError(f"task set {taskset} has no meta-training (train) tasks")
    return train


def build_learner(identity: dict, device: str = "cpu"):
    """The untrained ``ActivityGP`` of a model's identity."""
    from metalearn.activity import ActivityGP

    return ActivityGP(**identity["learner_config"], device=device)


def load_learner(folder: Path, device: str = "cpu"):
    """The trained learner of a model folder (its identity and weights)."""
    from safetensors.torch import load_file

    learner = build_learner(read_json(folder / "spec.json", "model spec"), device)
    learner.load_state_dict(load_file(str(folder / WEIGHTS)))
    return learner


def _save_state(learner, path: Path, losses: list[float]) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(learner.state_dict(), str(tmp), metadata={"step": str(int(learner.step)), "losses": json.dumps(losses)})


def _load_state(learner, path: Path) -> list[float]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as fh:
        losses = json.loads((fh.metadata() or {}).get("losses", "[]"))
    learner.load_state_dict(load_file(str(path)))
    return losses


class TrainingStart(NamedTuple):
    """What a compound learner's training starts from (``start_training``)."""

    tasks: object  # medmeta.chem.target_tasks.TargetTaskSet
    identity: dict
    name: str
    folder: Path
    train: list
    device: str
    features: dict[str, np.ndarray]


def start_training(home: Home, taskset: str, settings, identity_of: Callable[[dict], dict]
                   ) -> TrainedActivity | TrainingStart:
    """The model of target task set ``taskset`` with the identity ``identity_of(manifest)`` when it is already
    trained (nothing else done); else the start of its training: the task set, identity, name, folder (its
    ``spec.json`` written), train tasks, device (``compounds.device``) and features (the identity's
    ``featuriser``, from the snapshot's cache). Shared by ActivityGP and the episodic learners."""
    from medmeta.chem.target_tasks import load_target_taskset

    tasks = load_target_taskset(home, taskset)
    identity = identity_of(tasks.manifest)
    name = compound_model_name(identity)
    folder = model_dir(home, name)
    found = found_model(name, folder)
    if found is not None:
        return found
    train = train_tasks(tasks, taskset)
    write_json(folder / "spec.json", identity)
    return TrainingStart(tasks, identity, name, folder, train, resolve_device(str(settings.compounds["device"])),
                         task_features(home, tasks, identity["featuriser"]))


def train_activity_model(home: Home, taskset: str, settings, on_checkpoint: Callable[[int], None] | None = None
                         ) -> TrainedActivity:
    """Meta-train (or resume, or find) the activity model of target task set ``taskset``.

    ``on_checkpoint(step)`` is called after each checkpoint is written (progress; an exception from it stops the
    run there, as a kill would)."""
    import torch

    from medmeta.chem.evaluation import scorer_method

    compounds = settings.compounds
    start = start_training(home, taskset, settings, lambda manifest: activity_identity(manifest, compounds))
    if isinstance(start, TrainedActivity):
        return start
    tasks, identity, name, folder, train, device, features = start
    featuriser = identity["featuriser"]
    learner = build_learner(identity, device)
    losses: list[float] = []
    if (folder / CHECKPOINT).is_file():
        losses = _load_state(learner, folder / CHECKPOINT)
    resumed_at = int(learner.step)
    data = [(torch.as_tensor(features[t.task], dtype=torch.float32, device=device),
             torch.as_tensor(np.array(t.labels), dtype=torch.int64, device=device)) for t in train]
    steps, every = int(compounds["steps"]), int(compounds["checkpoint_every"])
    started = time.perf_counter()
    while int(learner.step) < steps:
        losses += learner.meta_train(data, min(every, steps - int(learner.step)), device=device)
        _save_state(learner, folder / CHECKPOINT, losses)
        if on_checkpoint is not None:
            on_checkpoint(int(learner.step))
    seconds = time.perf_counter() - started
    del data
    with atomic_path(folder / WEIGHTS) as tmp:
        from safetensors.torch import save_file

        save_file(learner.state_dict(), str(tmp), metadata={"model": name})
    validation = validation_report(tasks, features, {
        "untrained": scorer_method(build_learner(identity, device).scores, featuriser, "the starting kernel", device),
        "meta_trained": scorer_method(learner.scores, featuriser, "after meta-training", device)}, compounds)
    result = {"model": name, "taskset": taskset, "snapshot": tasks.manifest["snapshot"], "learner": LEARNER,
              "featuriser": featuriser, "steps": int(learner.step), "resumed_at": resumed_at, "device": device,
              "seconds": round(seconds, 3), "loss_first10": _mean(losses[:10]), "loss_last10": _mean(losses[-10:]),
              "losses": [round(v, 6) for v in losses], "train_tasks": [t.task for t in train],
              "noise": float(learner.log_noise.detach().exp()),
              "block_weights": learner.log_w_tanimoto.detach().exp().tolist(),
              "validation": validation}
    write_json(folder / "result.json", result)
    return TrainedActivity(name, folder, False, int(learner.step), round(seconds, 3), device)


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 6) if values else None


def validation_report(tasks, features: dict[str, np.ndarray], methods: dict, compounds: dict) -> dict | None:
    """dAUPRC on the val tasks at the gate's support size, ``methods["untrained"]`` (the model before
    meta-training) against ``methods["meta_trained"]`` on the same draws (None when there is no val task or
    ``validation_draws`` is 0). ``features``: task -> rows of the methods' featuriser."""
    from medmeta.chem.evaluation import Split, run_protocol

    val = [t for t in tasks.split("val") if drawable(t.labels, int(compounds["gate_support_size"]))]
    draws, size = int(compounds["validation_draws"]), int(compounds["gate_support_size"])
    if not val or not draws:
        return None
    featuriser = methods["meta_trained"].featuriser
    result = run_protocol({t.task: t.labels for t in val}, {featuriser: features},
                          [Split(int(tasks.manifest.get("seed", 0)), (), tuple(t.task for t in val))],
                          methods, [size], draws)
    return {"purpose": "whether meta-training helped on targets it never saw (a report; the last step is the model)",
            "support_size": size, "draws": draws, "tasks": [t.task for t in val],
            "untrained": result.estimate("untrained", size).card(), "meta_trained": result.estimate("meta_trained", size).card(),
            "difference": result.difference("meta_trained", "untrained", size).card()}


def drawable(labels: np.ndarray, size: int) -> bool:
    positives = int((labels == 1).sum())
    return min(positives, len(labels) - positives) >= size // 2 + 1 and len(labels) > size


__all__ = ["TrainedActivity", "activity_identity", "activity_model_name", "build_learner", "compound_model_name",
           "features_dir", "found_model", "load_learner", "resolve_device", "task_features", "taskset_identity",
           "train_activity_model", "train_tasks", "validation_report"]
