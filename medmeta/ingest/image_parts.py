"""Image staging: one Parquet file per batch of DICOM files, and the pixel cache built from them.

    store/parts/images-<size>/<digest>.parquet   rows of the images table (pixel_path / pixel_index
                                          unset) plus ``pixels``: the float16 array's bytes
    cache/pixels/<digest>.npy             the snapshot's images stacked (N, size, size), float16,
                                          in the images table's order

A batch file is written whole or not at all once its batch is done; a file's content hash
in any batch file makes that content ``unchanged`` next time. The cache is rebuilt from the
active rows by consolidation, so it does not depend on how files were batched.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from medmeta import schema
from medmeta.atomic import atomic_path
from medmeta.ingest.parts import write_parquet

STAGED_COLUMNS = [n for n in schema.IMAGES.names if n not in ("pixel_path", "pixel_index")]
STAGING_SCHEMA = pa.schema([schema.IMAGES.field(n) for n in STAGED_COLUMNS] + [("pixels", pa.binary())])


@dataclass(frozen=True)
class ImagePayload:
    """What a worker hands back for one DICOM file: its row and its normalised pixels."""

    row: dict
    pixels: np.ndarray


def images_dir(parts_root: Path, size: int) -> Path:
    """Staging per image size: changing ``image_size`` reprocesses every DICOM file."""
    return parts_root / f"images-{size}"


def write_image_batch(parts_root: Path, size: int, payloads: list[ImagePayload]) -> None:
    if not payloads:
        return
    payloads = sorted(payloads, key=lambda p: p.row["source"])
    rows = [{**{c: p.row.get(c) for c in STAGED_COLUMNS}, "pixels": p.pixels.tobytes()} for p in payloads]
    digest = hashlib.sha256("".join(p.row["source"] for p in payloads).encode()).hexdigest()
    with atomic_path(images_dir(parts_root, size) / f"{digest}.parquet", fsync=False) as tmp:
        # Uncompressed: float16 pixels barely compress, and this file is read back once.
        write_parquet(pa.Table.from_pylist(rows, schema=STAGING_SCHEMA), tmp, compression="none")


def known_image_sources(parts_root: Path, size: int) -> frozenset[str]:
    files = sorted(images_dir(parts_root, size).glob("*.parquet"))
    return frozenset(s for f in files for s in pq.read_table(f, columns=["source"])["source"].to_pylist())


def read_image_rows(parts_root: Path, size: int, active: set[str]) -> pa.Table:
    tables = [pq.read_table(f) for f in sorted(images_dir(parts_root, size).glob("*.parquet"))]
    if not tables:
        return STAGING_SCHEMA.empty_table()
    table = pa.concat_tables(tables)
    return table.filter(pa.compute.is_in(table["source"], pa.array(sorted(active), pa.string())))


def write_pixel_cache(cache_dir: Path, home_root: Path, pixels: list[bytes], size: int) -> str:
    """Stack the pixels in row order into one content-addressed .npy; its path from the home."""
    stack = np.frombuffer(b"".join(pixels), dtype=np.float16).reshape(len(pixels), size, size) if pixels \
        else np.zeros((0, size, size), np.float16)
    digest = hashlib.sha256(stack.tobytes()).hexdigest()[:24]
    target = cache_dir / f"{digest}.npy"
    if not target.exists():
        with atomic_path(target) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, stack, allow_pickle=False)
    return str(target.relative_to(home_root))
