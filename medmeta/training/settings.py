"""The pipeline's settings: medmeta/config/pipeline.yaml, overlaid with the user's file.

A user file may leave keys out (the defaults stay); an unknown key, a value of the wrong type or
an unknown algorithm is refused with the file and the key named, before anything runs.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from medmeta.errors import MedmetaError

ALGORITHMS = ("maml", "fomaml", "reptile", "protonet", "matchingnet")
DEFAULT_FILE = "pipeline.yaml"
# keys whose values are free-form mappings handed to metalearn (checked there)
_FREE = {("train", "backbone"), ("train", "learner")}
_NULLABLE = {("train", "patience")}  # null: no early stopping


@dataclass(frozen=True)
class PipelineSettings:
    tasksets: list[dict]
    train: dict[str, Any]
    evaluate: dict[str, Any]
    publish: dict[str, Any]
    source: str  # where they came from, for messages and model cards
    arrival: dict[str, Any]  # what an arrival of new cases does (flows/arrival.py)

    def as_dict(self) -> dict:
        return {"tasksets": self.tasksets, "train": self.train, "evaluate": self.evaluate, "publish": self.publish,
                "arrival": self.arrival}


def _defaults() -> dict:
    return yaml.safe_load(resources.files("medmeta.config").joinpath(DEFAULT_FILE).read_text())


def _overlay(base: dict, user: dict, where: tuple[str, ...], path: str) -> dict:
    out = copy.deepcopy(base)
    for key, value in user.items():
        here = (*where, str(key))
        if key not in base:
            raise MedmetaError(f"{path}: unknown setting {'.'.join(here)}; known: {', '.join(sorted(map(str, base)))}")
        if isinstance(base[key], dict) and here not in _FREE:
            if not isinstance(value, dict):
                raise MedmetaError(f"{path}: {'.'.join(here)} must be a mapping")
            out[key] = _overlay(base[key], value, here, path)
        elif here in _FREE:
            if not isinstance(value, dict):
                raise MedmetaError(f"{path}: {'.'.join(here)} must be a mapping")
            out[key] = {**base[key], **value}
        else:
            kind = type(base[key])
            numeric = kind in (int, float) and isinstance(value, (int, float)) and not isinstance(value, bool)
            if not (isinstance(value, kind) or numeric or base[key] is None or (value is None and here in _NULLABLE)):
                raise MedmetaError(f"{path}: {'.'.join(here)} must be {kind.__name__}, got {value!r}")
            out[key] = value
    return out


NPROC_ENV = "MEDMETA_TRAIN_NPROC"  # overrides train.nproc (a Kubernetes job sets the world size with it)


def settings_from_dict(raw: dict, source: str) -> PipelineSettings:
    """Settings as ``PipelineSettings.as_dict()`` wrote them (a torchrun rank gets them so), checked again."""
    return _checked(_overlay(_defaults(), raw, (), source), source)


def _nproc_from_env(raw: dict, source: str) -> str:
    value = os.environ.get(NPROC_ENV)
    if value is None or value.strip() == "":
        return source
    try:
        nproc = int(value)
    except ValueError:
        raise MedmetaError(f"{NPROC_ENV} must be a positive integer (training processes)") from None
    raw["train"]["nproc"] = nproc
    return f"{source} with {NPROC_ENV}"


def load_settings(path: str | Path | None = None) -> PipelineSettings:
    raw = _defaults()
    source = f"medmeta/config/{DEFAULT_FILE}"
    if path is not None:
        path = Path(path)
        try:
            user = yaml.safe_load(path.read_text()) or {}
        except OSError as error:
            raise MedmetaError(f"{path}: cannot read the pipeline settings ({error.strerror})") from None
        except yaml.YAMLError as error:
            raise MedmetaError(f"{path}: not valid YAML ({error})") from None
        if not isinstance(user, dict):
            raise MedmetaError(f"{path}: the pipeline settings must be a mapping")
        raw = _overlay(raw, user, (), str(path))
        source = str(path)
    source = _nproc_from_env(raw, source)
    return _checked(raw, source)


def _checked(raw: dict, source: str) -> PipelineSettings:
    def fail(message: str):
        raise MedmetaError(f"{source}: {message}")

    train, evaluate, publish = raw["train"], raw["evaluate"], raw["publish"]
    if not isinstance(raw["tasksets"], list) or not raw["tasksets"]:
        fail("tasksets must be a non-empty list")
    from medmeta.tasksets.spec import TASKSET_KEYS

    for number, entry in enumerate(raw["tasksets"], start=1):
        if not isinstance(entry, dict) or "by" not in entry:
            fail(f"tasksets entry {number} must be a mapping with at least 'by' (disease or drug)")
        unknown = sorted(set(entry) - set(TASKSET_KEYS))
        if unknown:
            fail(f"tasksets entry {number}: unknown key(s) {', '.join(map(str, unknown))}; known: {', '.join(TASKSET_KEYS)}")
    for algorithm in train["algorithms"]:
        if algorithm not in ALGORITHMS:
            fail(f"train.algorithms: unknown algorithm {algorithm!r}; choose from {', '.join(ALGORITHMS)}")
    unknown = set(train["learner"]) - set(ALGORITHMS)
    if unknown:
        fail(f"train.learner: unknown algorithms {sorted(unknown)}")
    for key in ("steps", "meta_batch", "val_every", "val_episodes", "checkpoint_every", "nproc"):
        if not isinstance(train[key], int) or train[key] < 1:
            fail(f"train.{key} must be a positive integer, got {train[key]!r}")
    if not isinstance(evaluate["shots"], list) or not all(isinstance(k, int) and k >= 1 for k in evaluate["shots"]):
        fail(f"evaluate.shots must be a list of positive integers, got {evaluate['shots']!r}")
    if not isinstance(evaluate["episodes"], int) or evaluate["episodes"] < 2:
        fail(f"evaluate.episodes must be an integer of at least 2, got {evaluate['episodes']!r}")
    if publish["metric"] != "accuracy":
        fail(f"publish.metric: only accuracy is supported for classification task sets, got {publish['metric']!r}")
    if publish["shots"] not in evaluate["shots"]:
        fail(f"publish.shots ({publish['shots']}) must be one of evaluate.shots {evaluate['shots']}")
    if not 0 <= float(publish["margin"]) < 1:
        fail(f"publish.margin must lie in [0, 1), got {publish['margin']!r}")
    if not isinstance(raw["arrival"]["warm_steps"], int) or raw["arrival"]["warm_steps"] < 1:
        fail(f"arrival.warm_steps must be a positive integer, got {raw['arrival']['warm_steps']!r}")
    return PipelineSettings(raw["tasksets"], train, evaluate, publish, source, raw["arrival"])
