"""Weights on disk: safetensors only, with the SHA-256 of the exact bytes written and read.

torch and safetensors are imported inside the functions, so listing models never loads torch.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

from medmeta.checked_file import read_checked
from medmeta.errors import Rejected
from medmeta.registry.errors import ChecksumMismatch, DamagedEntry, InvalidCard
from medmeta.registry.stored import WEIGHTS_FIX

# safetensors' own parser refuses headers over 100 MB with an exception of its own; a model's header
# (names, dtypes, shapes, offsets) is a few KiB per hundred tensors, so 16 MiB is far beyond any real one.
MAX_HEADER_BYTES = 16 * 1024**2
MAX_WEIGHTS_BYTES = 64 * 1024**3  # when no card gives the size


def check_weights(tensors: Mapping[str, Any], allow_empty: bool = False) -> dict:
    """``tensors`` as a plain dict of name -> torch.Tensor, or ``InvalidCard`` naming the bad entry.
    ``allow_empty``: a baseline fitted on each support set at prediction time has no weights (an
    empty safetensors file, checked like any other)."""
    import torch

    if not isinstance(tensors, Mapping) or not (tensors or allow_empty):
        raise InvalidCard("weights must be a non-empty dict of name -> torch.Tensor (e.g. a state_dict); only a "
                          "card with a 'baseline' entry (a method fitted on the support set when it predicts) has none")
    for key, value in tensors.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise InvalidCard(f"weights entry {key!r} is not a str -> torch.Tensor pair")
    return dict(tensors)


def write_weights(tensors: Mapping[str, Any], path: Path, allow_empty: bool = False) -> dict:
    """Write ``tensors`` (name -> torch.Tensor) to ``path`` with safetensors, fsynced.

    Returns the card's ``weights`` entry: file, sha256, bytes, tensors, parameters.
    """
    from safetensors.torch import save

    # copies on the CPU: tied (shared-storage) weights save too, and the caller's tensors stay as they are
    plain = {key: value.detach().to("cpu", copy=True).contiguous()
             for key, value in check_weights(tensors, allow_empty).items()}
    data = save(plain)
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return {"file": path.name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
            "tensors": len(plain), "parameters": int(sum(t.numel() for t in plain.values()))}


def read_weights(path: Path, sha256: str, expected_bytes: int | None = None) -> dict:
    """The tensors in ``path`` (on CPU), after checking the file against its card: a regular file of
    ``expected_bytes`` (read from one descriptor, never more), of SHA-256 ``sha256``, whose safetensors
    header fits the file and ``MAX_HEADER_BYTES`` (``check_header``) before safetensors parses it."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    limit = expected_bytes if expected_bytes is not None else MAX_WEIGHTS_BYTES
    try:
        data = read_checked(path, limit, setting="size recorded in the card")  # hash and parse the same bytes
    except Rejected as rejected:
        raise DamagedEntry(path, rejected.message, WEIGHTS_FIX) from None
    if expected_bytes is not None and len(data) != expected_bytes:
        raise DamagedEntry(path, f"holds {len(data)} bytes, but its card records {expected_bytes}", WEIGHTS_FIX)
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise ChecksumMismatch(f"{path}: checksum mismatch: the card records sha256 {sha256}, the file has "
                               f"{actual}; the weights were changed after publishing and are not loaded")
    check_header(data, path)
    try:
        return load(data)
    except (SafetensorError, ValueError, TypeError, RuntimeError) as error:
        raise DamagedEntry(path, f"safetensors can not read it ({str(error)[:200]})",
                           WEIGHTS_FIX) from None


def check_header(data: bytes, path: Path) -> None:
    """Refuse (``DamagedEntry``) a safetensors file whose header can not be what safetensors writes:
    the first 8 bytes (little-endian u64) give the length of a JSON header that must fit in the file
    and in ``MAX_HEADER_BYTES``, and be a JSON object of UTF-8 text."""
    if len(data) < 8:
        raise DamagedEntry(path, f"holds {len(data)} bytes, fewer than the 8 of a safetensors header length",
                           WEIGHTS_FIX)
    length = int.from_bytes(data[:8], "little")
    if length > MAX_HEADER_BYTES:
        raise DamagedEntry(path, f"its safetensors header declares {length} bytes, over the limit of "
                                 f"{MAX_HEADER_BYTES}", WEIGHTS_FIX)
    if 8 + length > len(data):
        raise DamagedEntry(path, f"its safetensors header declares {length} bytes, but the file holds "
                                 f"{len(data) - 8} after the length", WEIGHTS_FIX)
    try:
        header = json.loads(data[8:8 + length].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise DamagedEntry(path, "its safetensors header is not JSON text", WEIGHTS_FIX) from None
    if not isinstance(header, dict):
        raise DamagedEntry(path, "its safetensors header is not a JSON object", WEIGHTS_FIX)
