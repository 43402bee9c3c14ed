"""Image staging: per ingest batch, one pixel shard and one Parquet file of rows pointing into it.

    cache/pixels/shards/<sha256>.npy           the batch's newly decoded images stacked (n, size, size),
                                               float16 in [0, 1], in the batch file's row order; named by
                                               the SHA-256 of the .npy file's bytes (content-addressed)
    store/parts/images-<size>/<digest>.parquet rows of the images table (pixel_path / pixel_index unset)
                                               plus ``shard`` (the shard's file name), ``shard_index``
                                               (the row's image in it) and ``pixel_sha256`` (SHA-256 of
                                               the image's float16 bytes)

``write_image_batch`` writes the shard first, then the rows, each to a temp file in its folder and
renamed (no fsync each, as every staging file: the flow's one ``sync`` before the ledger makes a run
durable; on a shared file system such as NFS a file's ``close`` sends it to the server): a reader (or a run killed mid-write) sees both whole or the rows absent, and
several processes on several machines sharing the home may write batches at once (the same images
give the same shard name and the same bytes, so a rename over it changes nothing).

An ingest that adds k images writes k images' pixels once. Consolidation reads the rows only (never
a pixel): each row of the images table points at its shard (``pixel_path``, ``pixel_index``). A
shard no snapshot refers to any more is kept (older snapshots may); nothing deletes shards.

Consolidation keeps every staged row in an index, ``store/parts/images-<size>/staged-rows.index`` (an
uncompressed Parquet file: the rows, the name of the batch file each came from and each row's content
hash ``row_sha256``, which the images table's digest sums: ``row_hashes``, ``multiset_digest``; Parquet, so the
same rows give the same bytes whichever engine staged them), and the rows staged since it was written in a
small delta index beside it (``staged-rows.delta.index``), and reads only the batch files neither holds, so
a rerun does not open every batch file again. A run adding a few images writes the delta again, not the
index; once the delta holds more than an eighth of the index's rows, the index is written again with them.
The indexes are staging (rebuilt from the batch files when absent or damaged), written by the single
writer only; ``known_image_sources`` reads them and the batch files they lack, writing nothing.
Consolidation extending the images table reads only the index's ``CHECK_COLUMNS`` (``StagedImages``).

Batch files written by older versions hold the pixels themselves (a ``pixels`` column): consolidation
migrates each once (``migrate_legacy_batches``: its pixels become a shard, the file is rewritten with
the shard columns), so a home made by an older version keeps working.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from medmeta import schema
from medmeta.atomic import atomic_path
from medmeta.home import Home
from medmeta.ingest.active import ActiveSet
from medmeta.ingest.parts import write_parquet

STAGED_COLUMNS = [n for n in schema.IMAGES.names if n not in ("pixel_path", "pixel_index")]
SHARD_FIELDS = [pa.field("shard", pa.string()), pa.field("shard_index", pa.int32()),
                pa.field("pixel_sha256", pa.string())]
STAGING_SCHEMA = pa.schema([schema.IMAGES.field(n) for n in STAGED_COLUMNS] + SHARD_FIELDS)
LEGACY_PIXELS = "pixels"  # the column older versions staged each image's float16 bytes in


@dataclass(frozen=True)
class ImagePayload:
    """What a worker hands back for one DICOM file: its row and its normalised pixels."""

    row: dict
    pixels: np.ndarray


def images_dir(parts_root: Path, size: int) -> Path:
    """Staging per image size: changing ``image_size`` reprocesses every DICOM file."""
    return parts_root / f"images-{size}"


def shard_relative_path(shard: str) -> str:
    """A shard's path from the home root, as the images table's ``pixel_path`` holds it."""
    return f"cache/pixels/shards/{shard}"


def stage_batch(parts_root: Path, size: int, results: list[tuple]) -> list:
    """One staging batch's worker results (``(FileOutcome, ImagePayload | None)`` each, as
    ``Worker.process`` returns them): its images staged with ``write_image_batch``; the outcomes,
    in order. The one way both engines (the local pool's task, a Dask worker) stage a batch."""
    write_image_batch(parts_root, size, [payload for _, payload in results if payload is not None])
    return [outcome for outcome, _ in results]


def write_image_batch(parts_root: Path, size: int, payloads: list[ImagePayload]) -> None:
    """Stage one batch's new images: their pixels as one shard, then their rows pointing into it.

    ``parts_root`` is the home's ``store/parts``. Rows are ordered by content hash, so the same batch
    gives the same bytes in any process or machine. Safe to call from several processes at once."""
    if not payloads:
        return
    payloads = sorted(payloads, key=lambda p: p.row["source"])
    stack = np.stack([np.asarray(p.pixels, dtype=np.float16).reshape(size, size) for p in payloads])
    shard = write_shard(Home.of_parts(parts_root).pixel_shards, stack)
    rows = [{**{c: p.row.get(c) for c in STAGED_COLUMNS}, "shard": shard, "shard_index": i,
             "pixel_sha256": hashlib.sha256(stack[i].tobytes()).hexdigest()}
            for i, p in enumerate(payloads)]
    digest = hashlib.sha256("".join(p.row["source"] for p in payloads).encode()).hexdigest()
    with atomic_path(images_dir(parts_root, size) / f"{digest}.parquet", fsync=False) as tmp:
        write_parquet(pa.Table.from_pylist(rows, schema=STAGING_SCHEMA), tmp)


def write_shard(shards_dir: Path, stack: np.ndarray) -> str:
    """``stack`` saved as ``<sha256 of the .npy bytes>.npy`` in ``shards_dir`` (unless there already);
    its file name. Temp file and rename: never seen half-written."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(stack, dtype=np.float16), allow_pickle=False)
    data = buffer.getvalue()
    name = f"{hashlib.sha256(data).hexdigest()}.npy"
    target = shards_dir / name
    if not (target.exists() and target.stat().st_size == len(data)):
        with atomic_path(target, fsync=False) as tmp:
            tmp.write_bytes(data)
    return name


INDEX_FILE = "staged-rows.index"
DELTA_FILE = "staged-rows.delta.index"
# The rows of batch files staged since the index was last written are kept in the delta index (small: each
# run that stages images writes it again) until they are more than 1/INDEX_SLACK_SHARE of the index's rows;
# then the index is written again with them and the delta removed. A run adding 20 images to 50,000 reads
# their batch file and the delta, writes the delta, and leaves the index as it is (the cost stays O(new
# images), amortised).
INDEX_SLACK_SHARE = 8
ROW_HASH = pa.field("row_sha256", pa.binary(32))
# The index also keeps each row's content hash (``row_hashes``), computed once per staged row: the images
# table's digest is their sum (``multiset_digest``), so a run adding 20 rows hashes 20 rows.
INDEX_SCHEMA = STAGING_SCHEMA.append(pa.field("batch", pa.string())).append(ROW_HASH)
CONTENT_COLUMNS = [n for n in STAGED_COLUMNS] + ["pixel_sha256"]  # what an images row says, not where it is stored


def row_hashes(rows: pa.Table) -> pa.FixedSizeBinaryArray:
    """SHA-256 of each row's content (``CONTENT_COLUMNS``, in that order, as one compact JSON list:
    strings as strings, numbers as numbers, dates ISO, null as null), never of where its pixels sit
    (``shard``, ``shard_index`` follow batching)."""
    columns = [rows[name].to_pylist() for name in CONTENT_COLUMNS]
    return pa.array([hashlib.sha256(orjson.dumps(list(values))).digest() for values in zip(*columns)], ROW_HASH.type)


def multiset_digest(hashes: pa.Array | pa.ChunkedArray) -> bytes:
    """The sum of ``hashes`` (each a 256-bit big-endian number) modulo 2**256, 32 bytes: the same rows
    give the same digest whatever their order or how they were batched, and one more row costs one
    addition (an additive multiset hash over SHA-256)."""
    if isinstance(hashes, pa.ChunkedArray):
        hashes = hashes.combine_chunks() if hashes.num_chunks else pa.array([], ROW_HASH.type)
    if hashes.null_count:
        raise ValueError("multiset_digest: a row without its hash")
    count = len(hashes)
    if count == 0:
        return bytes(32)
    limbs = np.frombuffer(hashes.buffers()[1], dtype=">u2", count=16 * (hashes.offset + count))[16 * hashes.offset:]
    sums = limbs.reshape(count, 16).sum(axis=0, dtype=np.uint64)  # 16 big-endian 16-bit limbs, summed without overflow
    total = 0
    for limb in sums.tolist():
        total = (total << 16) + int(limb)
    return (total % (1 << 256)).to_bytes(32, "big")


def _batch_files(parts_root: Path, size: int) -> list[Path]:
    return sorted(images_dir(parts_root, size).glob("*.parquet"))


def staged_batches(parts_root: Path, size: int) -> tuple[str, ...]:
    """The names of the image batch files of ``size`` staged now, sorted (a listing: no file read)."""
    return tuple(path.name for path in _batch_files(parts_root, size))


def staging_listing(parts_root: Path, size: int) -> str:
    """A digest of the names of what a settled ledger entry's content is staged in: the parts in ``parts_root``
    (``store/parts``) and the image batch files of ``size`` (the indexes aside: consolidation rewrites them).
    Staged files are named by their content and never changed in place, so the same digest means nothing
    staged was removed (``Ledger.settled_matcher(staging=)``). A listing: no file read."""
    names = sorted(entry.name for entry in os.scandir(parts_root) if not entry.name.startswith(".")) \
        if parts_root.is_dir() else []
    listed = "\0".join([str(size), *names, "", *staged_batches(parts_root, size)])
    return hashlib.sha256(listed.encode("utf-8", "surrogateescape")).hexdigest()


def known_image_sources(parts_root: Path, size: int, batches: Collection[str] | None = None) -> frozenset[str]:
    """The content hashes staged as images of ``size`` (either staging format), in the batch files named
    in ``batches`` (None: every one there now); writes nothing."""
    held = _indexed_rows(parts_root, size, columns=["source", "batch"], batches=batches)
    sources = held.index["source"].to_pylist() + held.delta["source"].to_pylist()
    for path in held.missing:
        with pq.ParquetFile(path) as parquet:
            sources += parquet.read(columns=["source"])["source"].to_pylist()
    return frozenset(sources)


@dataclass(frozen=True)
class _Held:
    """What the indexes hold of the batch files still there: the index's rows (the columns asked), the
    delta index's rows (whole; none of a batch file the index holds), and the batch files neither holds."""

    index: pa.Table
    delta: pa.Table
    missing: list[Path]
    batches: frozenset[str]  # the names of the batch files there (among those asked for)


def _indexed_rows(parts_root: Path, size: int, columns: list[str] | None = None,
                  batches: Collection[str] | None = None) -> _Held:
    """``_Held`` for the batch files of ``size`` there now (those named in ``batches``, when given); the
    index's ``columns`` (all by default)."""
    folder = images_dir(parts_root, size)
    files = _batch_files(parts_root, size)
    if batches is not None:
        wanted_files = set(batches)
        files = [f for f in files if f.name in wanted_files]
    names = {f.name for f in files}
    wanted = INDEX_SCHEMA if columns is None else pa.schema([INDEX_SCHEMA.field(c) for c in columns])
    index = _rows_of(_read_index(folder / INDEX_FILE, wanted), names)
    held = set(pc.unique(index["batch"]).to_pylist())
    # a batch file in both (a run killed between writing the index and removing the delta): the index's rows
    delta = _rows_of(_read_index(folder / DELTA_FILE, INDEX_SCHEMA), names - held)
    held |= set(pc.unique(delta["batch"]).to_pylist())
    return _Held(index, delta, [f for f in files if f.name not in held], frozenset(names))


def _read_index(path: Path, wanted: pa.Schema) -> pa.Table:
    """An index file's rows (``wanted``'s columns); none when it is absent, damaged or of another format
    (the batch files are then read again)."""
    try:
        with pq.ParquetFile(path) as parquet:  # not read_table: its dataset layer costs a decode worker 0.15 s to import
            if parquet.schema_arrow == INDEX_SCHEMA:
                return parquet.read(columns=wanted.names).select(wanted.names)
    except (OSError, pa.ArrowInvalid):
        pass
    return pa.Table.from_batches([], schema=wanted)  # not ``empty_table``: it imports pandas (0.15 s in a worker)


def _rows_of(table: pa.Table, batches: set[str]) -> pa.Table:
    """The rows of ``table`` from the batch files named in ``batches`` (the others are gone, or held elsewhere)."""
    if not table.num_rows or set(pc.unique(table["batch"]).to_pylist()) <= batches:
        return table  # the usual case, made without an array from a list (that imports pandas: 0.2 s in a worker)
    return table.filter(pc.is_in(table["batch"], pa.array(sorted(batches), pa.string())))


def staged_image_rows(parts_root: Path, size: int) -> pa.Table:
    """Every staged row (no pixels) of images of ``size``, with its ``batch``; batch files the indexes
    lack are read (older ones migrated first) and the indexes kept up (``_held_and_recent``). Single writer only."""
    held, recent, due = _held_and_recent(parts_root, size)
    if due:
        _write_index(parts_root, size, INDEX_FILE, pa.concat_tables([held.index, recent]))
        (images_dir(parts_root, size) / DELTA_FILE).unlink(missing_ok=True)
    return pa.concat_tables([held.index, recent])  # chunked: no copy of the 50,000 indexed rows


def _held_and_recent(parts_root: Path, size: int, columns: list[str] | None = None) -> tuple[_Held, pa.Table, bool]:
    """What the indexes hold (the index's ``columns``), the recent rows (the delta index's and those of the
    batch files neither index holds, whole) and whether these are due to join the index (more than
    1/``INDEX_SLACK_SHARE`` of its rows: the caller writes it again with them); when not, and a batch file
    was read, the delta index is written with them. Single writer only."""
    held = _indexed_rows(parts_root, size, columns)
    recent = _recent_rows(parts_root, size, held)
    due = recent.num_rows * INDEX_SLACK_SHARE > held.index.num_rows
    if not due and held.missing:
        _write_index(parts_root, size, DELTA_FILE, recent)
    return held, recent, due


def _recent_rows(parts_root: Path, size: int, held: _Held) -> pa.Table:
    """The delta index's rows and those of the batch files neither index holds, read."""
    shards_dir = Home.of_parts(parts_root).pixel_shards
    added = [_batch_rows(path, size, shards_dir) for path in held.missing]
    return pa.concat_tables([held.delta, *added]).combine_chunks() if added else held.delta


def _write_index(parts_root: Path, size: int, name: str, rows: pa.Table) -> None:
    with atomic_path(images_dir(parts_root, size) / name, fsync=False) as tmp:
        write_parquet(rows, tmp, compression="none")


def _batch_rows(path: Path, size: int, shards_dir: Path) -> pa.Table:
    """A batch file's rows with their ``batch`` and ``row_sha256`` (an older version's file migrated first)."""
    if LEGACY_PIXELS in pq.read_schema(path).names:
        _migrate_legacy_batch(path, size, shards_dir)
    rows = pq.read_table(path, schema=STAGING_SCHEMA)
    rows = rows.append_column(INDEX_SCHEMA.field("batch"), pa.array([path.name] * rows.num_rows, pa.string()))
    return rows.append_column(ROW_HASH, row_hashes(rows))


def _migrate_legacy_batch(path: Path, size: int, shards_dir: Path) -> None:
    """Rewrite a batch file of an older version (pixels inside) as a shard plus rows pointing into it.
    Run by the single writer (consolidation, under the home lock)."""
    table = pq.read_table(path)
    pixels = table[LEGACY_PIXELS].to_pylist()
    stack = np.frombuffer(b"".join(pixels), dtype=np.float16).reshape(len(pixels), size, size)
    shard = write_shard(shards_dir, stack)
    rows = table.select(STAGED_COLUMNS)
    rows = rows.append_column(SHARD_FIELDS[0], pa.array([shard] * len(pixels), pa.string()))
    rows = rows.append_column(SHARD_FIELDS[1], pa.array(range(len(pixels)), pa.int32()))
    rows = rows.append_column(SHARD_FIELDS[2], pa.array([hashlib.sha256(p).hexdigest() for p in pixels]))
    with atomic_path(path) as tmp:
        write_parquet(rows.cast(STAGING_SCHEMA), tmp)


def _active_rows(table: pa.Table, active: pa.Array) -> pa.Table:
    keep = pc.is_in(table["source"], value_set=active)  # in any order
    if keep.null_count == 0 and pc.all(keep).as_py() is not False:  # all active (a rerun adding files): no copy
        return table
    return table.filter(keep)


# What the images table's extension check needs of the rows it covered (``images_table``): not their content.
CHECK_COLUMNS = ["source", "batch", "image_id", "row_sha256"]


class StagedImages:
    """The staged rows (no pixels) of images of ``size`` whose ``source`` is in ``active`` (an ``ActiveSet``,
    or the hashes), each with its ``batch`` and ``row_sha256``, read as little as consolidation needs:
    ``grown`` reads the index's ``batch`` and ``image_id`` and the rows staged since a table was written,
    ``split`` the index's ``CHECK_COLUMNS`` (a table extended by 20 rows does not read the content of the
    50,000 rows it holds), ``rows`` every row whole (the table written again)."""

    def __init__(self, parts_root: Path, size: int, active: "ActiveSet | Iterable[str]"):
        self.parts_root, self.size = parts_root, size
        self.active = active if isinstance(active, ActiveSet) else None
        self._given = None if self.active is not None else list(active)
        self._active_array: pa.Array | None = None
        self._rows: pa.Table | None = None

    @property
    def _active(self) -> pa.Array:
        if self._active_array is None:
            hashes = self.active.hashes() if self.active is not None else self._given
            self._active_array = pa.array(hashes, pa.string())
        return self._active_array

    def grown(self, covered: list[str], added: frozenset[str]) -> pa.Table | None:
        """The rows of the batch files not in ``covered`` (those a table covering ``covered`` lacks), whole,
        when they are exactly what the active set's growth by ``added`` brings to it: every covered batch
        file still there and the index holding no other, every new row's source in ``added``, and no new row
        of an image a covered row already is. None otherwise (``split`` then checks the long way). Reads the
        index's ``batch`` and ``image_id`` only, never every active hash."""
        held, recent, due = _held_and_recent(self.parts_root, self.size, ["batch", "image_id"])
        if due or not set(covered) <= held.batches:  # due: ``rows`` writes the index again
            return None
        covered_names = pa.array(sorted(covered), pa.string())
        if held.index.num_rows and not pc.all(pc.is_in(held.index["batch"], value_set=covered_names)).as_py():
            return None
        old = pc.is_in(recent["batch"], value_set=covered_names)
        new = recent.filter(pc.invert(old))
        if not new.num_rows:
            return new
        if not pc.all(pc.is_in(new["source"], value_set=pa.array(sorted(added), pa.string()))).as_py():
            return None
        held_ids = pa.chunked_array([held.index["image_id"], recent.filter(old)["image_id"]], pa.string())
        if held_ids.length() and pc.any(pc.is_in(held_ids, value_set=pc.unique(new["image_id"]))).as_py():
            return None
        return new

    def split(self) -> tuple[pa.Table, pa.Table]:
        """``(indexed, unindexed)``: the active rows the index holds (``CHECK_COLUMNS`` only) and the others
        (the delta index's and those of the batch files neither index holds), whole. When the others are
        due to join the index (``INDEX_SLACK_SHARE``), every row is read whole (``rows``, which writes the
        index again) and ``indexed`` is empty."""
        held, recent, due = _held_and_recent(self.parts_root, self.size, CHECK_COLUMNS)
        if due:
            return held.index.schema.empty_table(), self.rows()
        return _active_rows(held.index, self._active), _active_rows(recent, self._active)

    def rows(self) -> pa.Table:
        """Every active staged row, whole (``staged_image_rows``; read once)."""
        if self._rows is None:
            self._rows = _active_rows(staged_image_rows(self.parts_root, self.size), self._active)
        return self._rows
