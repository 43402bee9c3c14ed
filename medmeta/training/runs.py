"""Training runs: one folder per model under ``H/training/<model>/``.

A model's name is ``<task set>-<algorithm>-<digest>``, the digest covering the task set's
manifest, the model spec and the training settings: the same inputs give the same name, so a
finished model is not trained again and a crashed one resumes from its checkpoint.

    spec.json                 what the model is (task set, spec, training settings)
    checkpoint/               the trainer's checkpoint (safetensors), written every N steps
    weights.safetensors       the trained meta-parameters (best validated)
    result.json               steps, stop reason, history, validations, device, seconds
    curve.png                 the training curve
    evaluation.json / .png    meta-test accuracy against shots, with the baselines
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from medmeta.atomic import atomic_path
from medmeta.errors import MedmetaError
from medmeta.home import Home
from medmeta.training.models import spec_digest

TRAIN_KEYS = ("steps", "meta_batch", "lr", "val_every", "val_episodes", "patience", "checkpoint_every", "seed")


def manifest_digest(manifest: dict) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def run_identity(manifest: dict, spec: dict, train: dict) -> dict:
    """What makes a trained model: the task set, the model spec, the training settings and the
    episode sampler's scheme (another scheme draws other episodes from the same seed)."""
    from metalearn.sampler import SCHEME

    return {"taskset": {"name": manifest["name"], "snapshot": manifest["snapshot"], "digest": manifest_digest(manifest)},
            "spec": spec, "train": {k: train[k] for k in TRAIN_KEYS}, "sampler": SCHEME}


def model_name(identity: dict) -> str:
    """``<task set>-<algorithm>-<digest>``; a warm start's ``<task set>-<algorithm>-warm<steps>-<digest>``
    (the digest covers its parent): never the name of a model trained from scratch."""
    warm = identity.get("warm_start")
    kind = f"-warm{int(warm['steps'])}" if warm else ""
    return f"{identity['taskset']['name']}-{identity['spec']['algorithm']}{kind}-{spec_digest(identity)}"


def model_dir(home: Home, name: str) -> Path:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise MedmetaError(f"{name!r} is not a model name")
    return home.training / name


def read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise MedmetaError(f"{path}: no {what}")
    return json.loads(path.read_text())


def write_json(path: Path, value: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(value, indent=1, sort_keys=True, default=str))


def trained_models(home: Home) -> list[str]:
    root = home.training
    return sorted(d.name for d in root.iterdir() if (d / "result.json").is_file()) if root.is_dir() else []


def require_model(home: Home, name: str) -> Path:
    folder = model_dir(home, name)
    if not (folder / "result.json").is_file():
        known = trained_models(home)
        raise MedmetaError(f"no trained model {name!r} in {home.training}; trained: {', '.join(known) or 'none'}")
    return folder
