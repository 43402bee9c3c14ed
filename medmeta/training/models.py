"""A model's spec: everything needed to rebuild its learner from a task set and the settings.

The spec is plain JSON (stored with each training run and in each published model card), so a
published model is rebuilt from its card and its safetensors weights, never unpickled.
"""

from __future__ import annotations

import copy
import hashlib
import json

from medmeta.errors import MedmetaError


def model_spec(manifest: dict, algorithm: str, train: dict) -> dict:
    """The spec of ``algorithm`` on the task set ``manifest`` with the ``train`` settings."""
    inputs = manifest["inputs"]
    if inputs not in train["backbone"]:
        raise MedmetaError(f"train.backbone has no entry for {inputs} inputs")
    backbone = copy.deepcopy(train["backbone"][inputs])
    name = backbone.pop("name")
    features = manifest["features"]
    image = features.get("image")
    record = features.get("record")
    if name == "conv4":
        backbone.update(in_channels=1, image_size=int(image["size"][0]))
    elif name == "mlp":
        backbone.update(in_features=len(record["names"]))
    elif name == "fusion":
        backbone.setdefault("image", {}).update(in_channels=1, image_size=int(image["size"][0]))
        backbone.setdefault("record", {}).update(in_features=len(record["names"]))
    return {
        "algorithm": algorithm,
        "backbone": {"name": name, "config": backbone},
        "learner": dict(train["learner"].get(algorithm) or {}),
        "n_way": int(manifest["ways"]),
        "kind": manifest["kind"],
        "inputs": inputs,
        "features": features,
    }


def spec_digest(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def build_learner(spec: dict):
    """The (untrained) learner of ``spec``; load weights into it with metalearn's safetensors loader."""
    from metalearn import build_backbone
    from metalearn import build_learner as make

    backbone = build_backbone(spec["backbone"]["name"], **spec["backbone"]["config"])
    try:
        return make(spec["algorithm"], backbone, n_way=spec["n_way"], **spec["learner"])
    except ValueError as error:
        raise MedmetaError(f"train.learner.{spec['algorithm']}: {error}") from None


def backbone_factory(spec: dict):
    """A function making fresh backbones of the spec's kind (for the baselines)."""
    from metalearn import build_backbone

    return lambda: build_backbone(spec["backbone"]["name"], **copy.deepcopy(spec["backbone"]["config"]))
