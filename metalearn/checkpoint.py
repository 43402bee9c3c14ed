"""Training checkpoints and published weights, written with safetensors only.

One file, ``checkpoint.safetensors``, holds a whole training state:

- ``model/<key>``: the learner's ``state_dict``;
- ``best/<key>``: the weights of the best validation so far (when there was one);
- ``optim/<param index>/<state key>``: the optimizer state's tensors (Adam's ``exp_avg``,
  ``exp_avg_sq``, ``step``); its param groups and any non-tensor state go in the metadata;
- ``rng/torch``: the torch CPU generator state (uint8), ``rng/cuda`` when on CUDA;
- the safetensors metadata ``medmeta``: JSON with ``format``, ``learner``, ``step``, ``config``,
  ``optimizer`` (param groups, scalars), ``trainer`` (best score and step, early-stopping
  counter, stop reason, history) and anything else the trainer keeps.

Every write is atomic (temp file beside the target, fsync, rename), so a ``kill -9`` leaves the
previous checkpoint or the new one, never half. Loading refuses, with a ``CheckpointError``
naming the file, a checkpoint of another format, learner, config or tensor shapes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from medmeta.atomic import atomic_path

FORMAT = "medmeta-metalearn-checkpoint/1"
WEIGHTS_FORMAT = "medmeta-metalearn-weights/1"
CHECKPOINT_NAME = "checkpoint.safetensors"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into this run; the message names the file and why."""


@dataclass
class Checkpoint:
    """What a checkpoint holds besides the learner's weights (already loaded into the learner)."""

    step: int
    config: dict[str, Any]
    trainer: dict[str, Any] = field(default_factory=dict)
    best_state: dict[str, Tensor] | None = None
    path: Path | None = None


def _cpu(t: Tensor) -> Tensor:
    return t.detach().to("cpu").contiguous().clone()


def _canonical(config: dict[str, Any]) -> dict[str, Any]:
    """The config as it reads back from JSON, so a fresh config and a loaded one compare equal."""
    return json.loads(json.dumps(config, sort_keys=True, default=str))


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"optim/{index}/{key}"] = _cpu(value)
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"type": type(optimizer).__name__, "param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, index, key = name.split("/", 2)
        state.setdefault(int(index), {})[key] = value
    for index, entries in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(entries)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(path: str | os.PathLike, learner: nn.Module, optimizer: torch.optim.Optimizer | None, *,
                    step: int, config: dict[str, Any], trainer: dict[str, Any] | None = None,
                    best_state: dict[str, Tensor] | None = None, rng: dict[str, Tensor] | None = None) -> Path:
    """Write a training checkpoint atomically to ``path``; refuses non-finite weights.

    ``rng`` defaults to the current torch CPU (and CUDA) generator states.
    """
    path = Path(path)
    tensors = {f"model/{k}": _cpu(v) for k, v in learner.state_dict().items()}
    for key, value in tensors.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise CheckpointError(f"refusing to write {path}: {key} holds NaN or inf")
    if best_state is not None:
        tensors.update({f"best/{k}": _cpu(v) for k, v in best_state.items()})
    optim_meta = None
    if optimizer is not None:
        optim_tensors, optim_meta = _flatten_optimizer(optimizer)
        tensors.update(optim_tensors)
    if rng is None:
        rng = current_rng()
    tensors.update({f"rng/{k}": _cpu(v) for k, v in rng.items()})
    meta = {"format": FORMAT, "learner": learner_name(learner), "step": int(step), "config": _canonical(config),
            "optimizer": optim_meta, "trainer": trainer or {}}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"medmeta": json.dumps(meta, default=str)})
    return path


def _read(path: Path, expected_format: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except CheckpointError:
        raise
    except Exception as exc:  # safetensors raises its own error types for truncated or foreign files
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from exc
    try:
        meta = json.loads(header["medmeta"])
    except (KeyError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} has no medmeta metadata; not written by metalearn") from exc
    if meta.get("format") != expected_format:
        raise CheckpointError(f"{path} has format {meta.get('format')!r}, expected {expected_format!r}")
    return tensors, meta


def _check_state(path: Path, learner: nn.Module, state: dict[str, Tensor], what: str) -> None:
    own = learner.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{path}: {what} do not match the learner: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if state[k].shape != v.shape]
    if wrong:
        raise CheckpointError(f"{path}: {what} have other shapes than the learner's: " + "; ".join(wrong[:5]))


def _prefixed(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def load_checkpoint(path: str | os.PathLike, learner: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
                    config: dict[str, Any] | None = None, restore_rng: bool = True) -> Checkpoint:
    """Load a checkpoint into ``learner`` (and ``optimizer``); restore the RNG states.

    Refuses (``CheckpointError``) a checkpoint of another learner, of another ``config`` (when
    given) or with other tensor names or shapes. Nothing is changed unless everything matches.
    """
    path = Path(path)
    tensors, meta = _read(path, FORMAT)
    if meta["learner"] != learner_name(learner):
        raise CheckpointError(f"{path} holds a {meta['learner']} learner, this run trains {learner_name(learner)}")
    if config is not None and _canonical(config) != meta["config"]:
        ours, theirs = _canonical(config), meta["config"]
        differ = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        raise CheckpointError(f"{path} was written with another config; differing keys: "
                              + ", ".join(f"{k} (checkpoint {theirs.get(k)!r}, now {ours.get(k)!r})" for k in differ))
    model = _prefixed(tensors, "model/")
    _check_state(path, learner, model, "weights")
    best = _prefixed(tensors, "best/") or None
    if best is not None:
        _check_state(path, learner, best, "best weights")
    optim_state = None
    if optimizer is not None:
        if meta["optimizer"] is None:
            raise CheckpointError(f"{path} holds no optimizer state")
        if meta["optimizer"]["type"] != type(optimizer).__name__:
            raise CheckpointError(f"{path} holds {meta['optimizer']['type']} state, this run uses "
                                  f"{type(optimizer).__name__}")
        optim_state = _unflatten_optimizer({k: v for k, v in tensors.items() if k.startswith("optim/")},
                                           meta["optimizer"])
        ours = [len(g["params"]) for g in optimizer.state_dict()["param_groups"]]
        theirs = [len(g["params"]) for g in optim_state["param_groups"]]
        if ours != theirs:
            raise CheckpointError(f"{path}: optimizer param groups hold {theirs} tensors, this run's {ours}")
    learner.load_state_dict(model)
    if optim_state is not None:
        optimizer.load_state_dict(optim_state)
    if restore_rng:
        rng = _prefixed(tensors, "rng/")
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    return Checkpoint(step=int(meta["step"]), config=meta["config"], trainer=meta.get("trainer") or {},
                      best_state=best, path=path)


def read_checkpoint_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata of a checkpoint (step, config, trainer state), without loading weights."""
    return _read(Path(path), FORMAT)[1]


def current_rng() -> dict[str, Tensor]:
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state()
    return rng


def learner_name(learner: nn.Module) -> str:
    return str(getattr(learner, "name", None) or type(learner).__name__)


def save_weights(path: str | os.PathLike, learner: nn.Module, metadata: dict[str, Any] | None = None) -> Path:
    """Write only the learner's ``state_dict`` (what gets published), atomically."""
    path = Path(path)
    tensors = {k: _cpu(v) for k, v in learner.state_dict().items()}
    meta = {"format": WEIGHTS_FORMAT, "learner": learner_name(learner), "metadata": metadata or {}}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"medmeta": json.dumps(meta, default=str)})
    return path


def load_weights(path: str | os.PathLike, learner: nn.Module) -> dict[str, Any]:
    """Load weights written by ``save_weights`` into ``learner``; return their metadata."""
    path = Path(path)
    tensors, meta = _read(path, WEIGHTS_FORMAT)
    if meta["learner"] != learner_name(learner):
        raise CheckpointError(f"{path} holds {meta['learner']} weights, not {learner_name(learner)}")
    _check_state(path, learner, tensors, "weights")
    learner.load_state_dict(tensors)
    return meta["metadata"]
