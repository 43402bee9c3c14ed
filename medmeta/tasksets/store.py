"""Task sets on disk, and loading them back as in-memory tensors.

    H/tasksets/<name>/manifest.json         what the task set is (written last: the commit point)
    H/tasksets/<name>/<split>.safetensors   per split (train, val, test, adaptation) its tensors:
        image   float16 [N, 1, S, S]   the cached pixels (inputs images | both)
        record  float32 [N, F]         the standardised record features (inputs records | both)
        label   int64   [N]            disease: index into the split's classes; drug: 1 = response
        task    int64   [N]            drug only: index into the split's drugs
      and in the header metadata ``medmeta`` (JSON): ``format`` and ``patient_ids``, the pseudonymous
      patient id of each row.

The manifest lists every split file with its SHA-256; ``load_taskset`` refuses a file that does
not match, so a half-written or edited task set is never trained on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np

from medmeta.atomic import write_bytes, write_json
from medmeta.errors import MedmetaError
from medmeta.home import Home

if TYPE_CHECKING:  # torch is imported when a task set is loaded, never by the CLI's start-up
    import torch

MANIFEST = "manifest.json"
FORMAT = 1


def tasksets_dir(home: Home) -> Path:
    return home.tasksets


def taskset_dir(home: Home, name: str) -> Path:
    return tasksets_dir(home) / name


def write_split(folder: Path, split: str, tensors: dict[str, np.ndarray], patient_ids: list[str]) -> dict:
    """Write ``<split>.safetensors`` atomically; return its file name and SHA-256."""
    from safetensors.numpy import save

    # one metadata key: safetensors writes its metadata map in no fixed order, and the bytes must not vary
    data = save({k: np.ascontiguousarray(v) for k, v in sorted(tensors.items())},
                metadata={"medmeta": json.dumps({"format": FORMAT, "patient_ids": patient_ids})})
    name = f"{split}.safetensors"
    write_bytes(folder / name, data)
    return {"file": name, "sha256": hashlib.sha256(data).hexdigest()}


def write_manifest(folder: Path, manifest: dict) -> None:
    """The manifest last; split files it does not list (an earlier build's) are removed after."""
    write_json(folder / MANIFEST, manifest)
    listed = {s["file"] for s in manifest["splits"].values()}
    for stale in folder.glob("*.safetensors"):
        if stale.name not in listed:
            stale.unlink()


def read_manifest(home: Home, name: str) -> dict:
    path = taskset_dir(home, name) / MANIFEST
    if not path.is_file():
        known = ", ".join(m["name"] for m in list_tasksets(home)) or "none"
        raise MedmetaError(f"no task set {name!r} in {tasksets_dir(home)} (task sets: {known}); "
                           "build one with `medmeta tasks build`")
    return json.loads(path.read_text())


def list_tasksets(home: Home) -> list[dict]:
    """Every task set's manifest, by name."""
    folder = tasksets_dir(home)
    if not folder.is_dir():
        return []
    return [json.loads((d / MANIFEST).read_text()) for d in sorted(folder.iterdir()) if (d / MANIFEST).is_file()]


Inputs = Union["torch.Tensor", dict]


@dataclass(frozen=True)
class TaskSplit:
    """One split in memory. ``inputs`` is a tensor, or ``{"image", "record"}`` for ``both``."""

    name: str  # train | val | test | adaptation
    kind: str  # disease | drug
    codes: list[str]  # disease: label i is codes[i]; drug: task i is the drug codes[i]
    inputs: Inputs  # image [N, 1, S, S] float | record [N, F] float | {"image", "record"}
    labels: torch.Tensor  # int64 [N]
    tasks: torch.Tensor | None  # drug: int64 [N] index into codes; disease: None
    patient_ids: list[str]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def sampler_kwargs(self) -> dict:
        """Arguments for ``metalearn.sampler.EpisodeSampler`` (add ways, shots, queries, tasks, seed)."""
        return {"inputs": self.inputs, "labels": self.labels, "groups": self.tasks,
                "shuffle_labels": self.kind == "disease"}


@dataclass(frozen=True)
class TaskSet:
    manifest: dict
    splits: dict[str, TaskSplit]  # train, val, test, and adaptation when there are rare classes


def _metadata(data: bytes) -> dict:
    """The ``__metadata__`` of safetensors bytes (8-byte little-endian header length, then JSON)."""
    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + size]).get("__metadata__") or {}


def load_taskset(home: Home, name: str, dtype=None) -> TaskSet:
    """The task set ``name`` as tensors (images as ``dtype``, default float32), checked against its manifest."""
    import torch
    from safetensors.torch import load

    dtype = dtype or torch.float32
    manifest = read_manifest(home, name)
    if manifest.get("kind") == "target":
        raise MedmetaError(f"task set {name!r} holds compound tasks (kind target): its models are trained, evaluated "
                           "and published by the compounds flow (`medmeta run LANDING --config "
                           "medmeta/config/pipeline-compounds.yaml`, flows/compounds.py), not by train/evaluate/adapt; "
                           "in Python: medmeta.chem.target_tasks.load_target_taskset")
    folder = taskset_dir(home, name)
    splits = {}
    for split, entry in manifest["splits"].items():
        path = folder / entry["file"]
        data = path.read_bytes() if path.is_file() else b""
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise MedmetaError(f"{path}: missing or not the file the manifest lists; build the task set again")
        tensors = load(data)
        meta = _metadata(data)
        if "medmeta" not in meta or json.loads(meta["medmeta"]).get("format") != FORMAT:
            raise MedmetaError(f"{path}: not a medmeta task set file of format {FORMAT}; build the task set again")
        patient_ids = json.loads(meta["medmeta"])["patient_ids"]
        parts = {k: tensors[k].to(dtype) for k in ("image", "record") if k in tensors}
        inputs = parts if len(parts) > 1 else next(iter(parts.values()))
        codes = [c["code"] for c in entry["classes"]]
        splits[split] = TaskSplit(split, manifest["kind"], codes, inputs, tensors["label"], tensors.get("task"),
                                  patient_ids)
    return TaskSet(manifest, splits)
