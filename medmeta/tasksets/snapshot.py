"""The validated snapshot a task set is built from: its tables and its cached pixels.

Only a snapshot that passed validation is read (``validation.gate.require_passed``), and only
its validated rows (``H/validation/<snapshot>/tables/``), never the raw store.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medmeta.errors import MedmetaError
from medmeta.home import Home
from medmeta.schema import TABLES
from validation.coverage import coverage_roles
from validation.gate import current_snapshot, require_passed, validation_dir


@dataclass(frozen=True)
class ValidatedSnapshot:
    home: Home
    snapshot: str
    tables: dict[str, pd.DataFrame]
    coverage: dict[tuple[str, str | None, str], str]  # (kind, system, code) -> meta_train | meta_test_only | too_few

    def pixels(self, images: pd.DataFrame) -> np.ndarray:
        """The cached pixels of ``images``' rows, in their order: float16 ``(N, S, S)``.

        Each row's ``pixel_path`` is a pixel shard (``cache/pixels/shards/``) or, for a snapshot made
        by an older version, the snapshot's stacked array (``cache/pixels/<digest>.npy``): both are
        ``.npy`` files read memory-mapped, each opened once per call (and kept open, ``open_pixels``)."""
        if images.empty:
            return np.zeros((0, 0, 0), np.float16)
        out = None
        for path, rows in images.groupby("pixel_path", sort=True).indices.items():
            full = self.home.root / path
            if not full.is_file():
                raise MedmetaError(f"{full}: the pixel cache of snapshot {self.snapshot} is missing; ingest again")
            stack = open_pixels(full)
            picked = np.asarray(stack[images["pixel_index"].to_numpy()[rows]])
            if out is None:
                out = np.empty((len(images), *stack.shape[1:]), np.float16)
            elif stack.shape[1:] != out.shape[1:]:
                raise MedmetaError(f"{full}: images of {stack.shape[1:]} pixels next to {out.shape[1:]}; "
                                   "a task set needs one image size")
            out[rows] = picked
        return out


_OPEN_KEEP = 256  # memory maps kept open (each holds one file descriptor)
_open: OrderedDict[tuple, np.ndarray] = OrderedDict()


def open_pixels(path: Path) -> np.ndarray:
    """``path``'s .npy memory-mapped read-only; the last ``_OPEN_KEEP`` opened are kept (keyed by
    path, size and mtime, so a replaced file is opened again) so reading many shards, again and again,
    does not pay for parsing each header each time."""
    info = path.stat()
    key = (str(path), info.st_size, info.st_mtime_ns)
    stack = _open.pop(key, None)
    if stack is None:
        stack = np.load(path, mmap_mode="r")
    _open[key] = stack
    while len(_open) > _OPEN_KEEP:
        _open.popitem(last=False)
    return stack


def load_validated(home: Home) -> ValidatedSnapshot:
    """The current snapshot's validated tables; a ``MedmetaError`` when it failed or was never validated."""
    snapshot = current_snapshot(home)
    result = require_passed(home, snapshot)
    folder = validation_dir(home, snapshot) / "tables"
    tables = {}
    for name, schema in TABLES.items():
        path = folder / f"{name}.parquet"
        tables[name] = pd.read_parquet(path) if path.exists() else schema.empty_table().to_pandas()
    coverage = coverage_roles(result.get("label_coverage", []))
    return ValidatedSnapshot(home, snapshot, tables, coverage)
