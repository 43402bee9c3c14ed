"""Weights on disk: safetensors only, with the SHA-256 of the exact bytes written and read.

torch and safetensors are imported inside the functions, so listing models never loads torch.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Mapping

from medmeta.registry.errors import ChecksumMismatch, InvalidCard


def check_weights(tensors: Mapping[str, Any]) -> dict:
    """``tensors`` as a plain dict of name -> torch.Tensor, or ``InvalidCard`` naming the bad entry."""
    import torch

    if not isinstance(tensors, Mapping) or not tensors:
        raise InvalidCard("weights must be a non-empty dict of name -> torch.Tensor (e.g. a state_dict)")
    for key, value in tensors.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise InvalidCard(f"weights entry {key!r} is not a str -> torch.Tensor pair")
    return dict(tensors)


def write_weights(tensors: Mapping[str, Any], path: Path) -> dict:
    """Write ``tensors`` (name -> torch.Tensor) to ``path`` with safetensors, fsynced.

    Returns the card's ``weights`` entry: file, sha256, bytes, tensors, parameters.
    """
    from safetensors.torch import save

    # copies on the CPU: tied (shared-storage) weights save too, and the caller's tensors stay as they are
    plain = {key: value.detach().to("cpu", copy=True).contiguous() for key, value in check_weights(tensors).items()}
    data = save(plain)
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return {"file": path.name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
            "tensors": len(plain), "parameters": int(sum(t.numel() for t in plain.values()))}


def read_weights(path: Path, sha256: str) -> dict:
    """The tensors in ``path`` (on CPU), after checking the file's SHA-256 against ``sha256``."""
    from safetensors.torch import load

    data = path.read_bytes()  # hash and parse the same bytes
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise ChecksumMismatch(f"{path}: checksum mismatch: the card records sha256 {sha256}, the file has "
                               f"{actual}; the weights were changed after publishing and are not loaded")
    return load(data)
