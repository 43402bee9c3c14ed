"""The store's images table, kept as parts: an ingest writes only the rows it adds.

    store/images/table.json          the table: its parts in order and what the next consolidation
                                     needs to extend it (``TableState``); written last, atomically
    store/images/<sha256>.parquet    a part: rows of ``schema.IMAGES`` in ``image_id`` order, named by
                                     the SHA-256 of its bytes; no ``image_id`` is in two parts

``read_images(home)`` is the one way to read the table (validation, tests, benches): every part's
rows in ``image_id`` order as one Arrow table, the same rows in the same order as the one Parquet file
``store/images.parquet`` older versions wrote, which it still reads in a home they consolidated (the
next consolidation replaces that file by parts).

What the table holds is what it always held: the staged rows of the active content hashes, one per
``image_id``, the first by ``(image_id, source, shard, shard_index)`` (``deduplicated``). Consolidation
(``update_images_table``) extends the table when the staged rows it considered last time are still
exactly there: ``table.json`` keeps the names of the staged batch files it covered and the count and
multiset digest of the rows of those it considered; when the active rows of those batch files are the
same multiset and the rows of the other batch files (the new ones) bring no ``image_id`` the table
already holds, the new rows' winners are written as one more part and nothing else is read or written.
Otherwise (a file replaced or quarantined, so its rows left; a new row for an ``image_id`` already
there; another image size; a part missing; an older home) the whole table is written again as one part.
So is it when it has more than ``MAX_PARTS`` parts (a compaction: reads stay one small file open each).

The table's digest (the snapshot id's, ``_digest``) is unchanged: the additive multiset hash of its
rows' content hashes (``image_parts.multiset_digest``) with its row count and column names. ``table.json``
keeps the sum, so a run adding 20 images adds 20 hashes to it.

Single writer (consolidation, under the home lock). A reader that lists ``table.json`` while a
compaction replaces the parts it names reads ``table.json`` again (``read_images``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from medmeta import schema
from medmeta.atomic import atomic_path, write_json
from medmeta.home import Home
from medmeta.ingest.image_parts import CHECK_COLUMNS, StagedImages, multiset_digest, shard_relative_path
from medmeta.ingest.parts import write_parquet

FOLDER = "images"
STATE_FILE = "table.json"
STATE_FORMAT = 1
MAX_PARTS = 64  # more parts than this: the table is compacted into one
NULL_COUNTED = ("modality", "body_part")  # absent, or not a defined term: counted in values_withheld
_READ_TRIES = 3


def images_folder(home: Home) -> Path:
    """``store/images/``: the images table's parts and ``table.json``."""
    return home.store / FOLDER


def legacy_images_file(home: Home) -> Path:
    """``store/images.parquet``: the images table as older versions wrote it (one file)."""
    return home.table("images")


@dataclass
class TableState:
    """``table.json``: the parts (file names, in order, with their row counts), the table's row count,
    multiset sum of its rows' hashes and null counts; the staged batch files consolidation covered and
    the count and multiset sum of the rows of those it considered (the active ones)."""

    image_size: int
    parts: list[dict] = field(default_factory=list)  # {"file": ..., "rows": ...}
    rows: int = 0
    row_sum: str = "0" * 64
    nulls: dict[str, int] = field(default_factory=lambda: {c: 0 for c in NULL_COUNTED})
    batches: list[str] = field(default_factory=list)
    considered_rows: int = 0
    considered_sum: str = "0" * 64
    active: str = ""  # the digest of the active set the table was made for (``ActiveSet.digest``; "" unknown)
    format: int = STATE_FORMAT

    @classmethod
    def read(cls, home: Home) -> "TableState | None":
        try:
            doc = json.loads((images_folder(home) / STATE_FILE).read_text(encoding="utf-8"))
            state = cls(**doc)
        except (OSError, ValueError, TypeError):
            return None
        return state if state.format == STATE_FORMAT else None

    def write(self, home: Home) -> None:
        write_json(images_folder(home) / STATE_FILE, asdict(self))


@dataclass(frozen=True)
class ImagesResult:
    """What consolidation reports of the images table: its digest, rows and null counts."""

    digest: str
    rows: int
    nulls: dict[str, int]


# ---------------------------------------------------------------------------------------------
# Reading


def images_present(home: Home) -> bool:
    """Whether the home has an images table (either layout) whose files are all there."""
    state = TableState.read(home)
    if state is not None:
        folder = images_folder(home)
        return all((folder / part["file"]).is_file() for part in state.parts)
    return legacy_images_file(home).is_file()


def read_images(home: Home, columns: list[str] | None = None) -> pa.Table:
    """The images table: every row in ``image_id`` order (``schema.IMAGES``; ``columns`` of it), as
    one Arrow table (``.to_pandas()`` for a frame). A home an older version consolidated: its
    ``store/images.parquet``. ``FileNotFoundError`` when the home has no images table."""
    for attempt in range(_READ_TRIES):
        state = TableState.read(home)
        if state is None:
            return pq.read_table(legacy_images_file(home), columns=columns)
        try:
            return _read_parts(images_folder(home), [part["file"] for part in state.parts], columns)
        except FileNotFoundError:
            if attempt == _READ_TRIES - 1:
                raise
    raise AssertionError("unreachable")


def _read_parts(folder: Path, files: list[str], columns: list[str] | None) -> pa.Table:
    wanted = schema.IMAGES if columns is None else pa.schema([schema.IMAGES.field(c) for c in columns])
    if not files:
        return wanted.empty_table()
    if len(files) == 1:
        return pq.read_table(folder / files[0], columns=wanted.names)
    read = wanted.names + [c for c in _ORDER if c not in wanted.names]
    table = pa.concat_tables([pq.read_table(folder / name, columns=read) for name in files])
    table = table.take(pc.sort_indices(table, [(c, "ascending") for c in _ORDER]))
    return table.select(wanted.names).combine_chunks()


# the images table's order: ``image_id`` (unique but for nulls), then what ``deduplicated`` sorts by
_ORDER = ["image_id", "source", "pixel_path", "pixel_index"]


# ---------------------------------------------------------------------------------------------
# Writing (consolidation)


def deduplicated(staged: pa.Table) -> pa.Table:
    """One row per ``image_id`` of the staged rows (the first by source, then shard: ``schema.KEYS``),
    in ``image_id`` order, each pointing at its image in its batch's shard (``pixel_path``,
    ``pixel_index``), with its ``row_sha256``. In Arrow: milliseconds for 50,000 rows."""
    order = pc.sort_indices(staged, [("image_id", "ascending"), ("source", "ascending"),
                                     ("shard", "ascending"), ("shard_index", "ascending")])
    table = staged.take(order)
    ids = table["image_id"].combine_chunks()
    if len(ids) > 1:
        first = pc.not_equal(ids.slice(1), ids.slice(0, len(ids) - 1)).fill_null(True)
        table = table.filter(pa.concat_arrays([pa.array([True]), first]))
    paths = pc.binary_join_element_wise(shard_relative_path(""), table["shard"], "")
    return (table.append_column("pixel_path", paths)
            .append_column("pixel_index", table["shard_index"])
            .drop_columns(["shard", "shard_index"]).combine_chunks())


def update_images_table(home: Home, staged: "pa.Table | StagedImages", image_size: int) -> ImagesResult:
    """Make the images table the deduplicated ``staged`` rows (the active staged rows, each with its
    ``batch`` and ``row_sha256``; or ``image_parts.StagedImages``, which reads them as needed): one new part
    holding the new rows when the table can be extended, else the whole table as one part (module docstring).
    When the table was made for the active set the ledger held before this run and the set only grew since
    (``ActiveSet.before``), the rows it lacks are those the growth brought (``StagedImages.grown``) and the
    50,000 it holds are not looked at."""
    state = TableState.read(home)
    lazy = isinstance(staged, StagedImages)
    active = staged.active.digest if lazy and staged.active is not None else ""
    added = None
    if state is not None and _parts_present(home, state, image_size):
        if active and state.active and state.active == staged.active.before:
            added = staged.grown(state.batches, staged.active.added)
        if added is None:
            added = _extension(state, *(staged.split() if lazy else (staged.schema.empty_table(), staged)))
    if added is None:
        state = _rebuilt(home, staged.rows() if lazy else staged, image_size, active)
    elif added.num_rows or state.active != active:
        state = _extended(home, state, added, active)
    if len(state.parts) > MAX_PARTS:
        state = _compacted(home, state)
    return ImagesResult(_digest(state), state.rows, dict(state.nulls))


def _parts_present(home: Home, state: TableState, image_size: int) -> bool:
    folder = images_folder(home)
    return state.image_size == image_size and all((folder / p["file"]).is_file() for p in state.parts)


def _extension(state: TableState, indexed: pa.Table, unindexed: pa.Table) -> pa.Table | None:
    """The staged rows the table lacks (those of batch files it did not cover), when the table can be
    extended by them; None when it must be written again. ``indexed``: active staged rows of which only
    ``image_parts.CHECK_COLUMNS`` are read (the staged-rows index's: all of a covered batch file);
    ``unindexed``: the other active staged rows, whole."""
    if indexed.num_rows and not pc.all(pc.is_in(indexed["batch"], value_set=pa.array(state.batches, pa.string()))).as_py():
        return None  # the index holds rows the table never covered (a run killed before table.json): rebuild
    covered = pc.is_in(unindexed["batch"], value_set=pa.array(state.batches, pa.string()))
    old = pa.concat_tables([indexed.select(CHECK_COLUMNS), unindexed.filter(covered).select(CHECK_COLUMNS)])
    if old.num_rows != state.considered_rows or multiset_digest(old["row_sha256"]).hex() != state.considered_sum:
        return None  # rows left (a file replaced, quarantined) or came back: the table changes inside
    new = unindexed.filter(pc.invert(covered))
    if new.num_rows and old.num_rows:
        clash = pc.is_in(old["image_id"], value_set=pc.unique(new["image_id"]))
        if pc.any(clash).as_py():
            return None  # a new row for an image the table holds: which one wins is decided whole
    return new


def _extended(home: Home, state: TableState, new: pa.Table, active: str) -> TableState:
    """``state`` plus a part of ``new``'s winners (none when it is empty), written, then recorded with the
    digest of the active set it is now made for."""
    winners = deduplicated(new)
    parts = list(state.parts)
    if winners.num_rows:
        parts.append({"file": _write_part(home, winners), "rows": winners.num_rows})
    nulls = _nulls(winners)
    extended = TableState(
        image_size=state.image_size, parts=parts, rows=state.rows + winners.num_rows,
        row_sum=_add_sums(state.row_sum, multiset_digest(winners["row_sha256"])),
        nulls={c: state.nulls.get(c, 0) + nulls[c] for c in NULL_COUNTED},
        batches=sorted(set(state.batches) | set(pc.unique(new["batch"]).to_pylist())),
        considered_rows=state.considered_rows + new.num_rows,
        considered_sum=_add_sums(state.considered_sum, multiset_digest(new["row_sha256"])), active=active)
    extended.write(home)
    return extended


def _rebuilt(home: Home, staged: pa.Table, image_size: int, active: str = "") -> TableState:
    """The whole table as one part, from every considered staged row; older files removed."""
    table = deduplicated(staged)
    parts = [{"file": _write_part(home, table), "rows": table.num_rows}] if table.num_rows else []
    state = TableState(image_size=image_size, parts=parts, rows=table.num_rows,
                       row_sum=multiset_digest(table["row_sha256"]).hex(), nulls=_nulls(table),
                       batches=sorted(set(pc.unique(staged["batch"]).to_pylist())),
                       considered_rows=staged.num_rows, considered_sum=multiset_digest(staged["row_sha256"]).hex(),
                       active=active)
    _replace_state(home, state)
    return state


def _compacted(home: Home, state: TableState) -> TableState:
    """The table's parts written as one (the same rows: ``read_images``' order); older parts removed."""
    table = _read_parts(images_folder(home), [p["file"] for p in state.parts], None)
    compacted = TableState(**{**asdict(state), "parts": [{"file": _write_part(home, table), "rows": table.num_rows}]})
    _replace_state(home, compacted)
    return compacted


def _replace_state(home: Home, state: TableState) -> None:
    """Record ``state``, then remove what no longer belongs to the table: parts it does not name (a
    compaction's inputs, a killed run's leftovers) and the older layout's ``store/images.parquet``."""
    state.write(home)
    keep = {p["file"] for p in state.parts} | {STATE_FILE}
    for path in images_folder(home).iterdir():
        if path.name not in keep and not path.name.startswith("."):
            path.unlink(missing_ok=True)
    legacy_images_file(home).unlink(missing_ok=True)


def _write_part(home: Home, table: pa.Table) -> str:
    """``table``'s rows (``schema.IMAGES``) as ``<sha256 of the bytes>.parquet`` in ``store/images/``."""
    sink = pa.BufferOutputStream()
    write_parquet(table.select(schema.IMAGES.names).cast(schema.IMAGES), sink)
    data = sink.getvalue().to_pybytes()
    name = f"{hashlib.sha256(data).hexdigest()}.parquet"
    target = images_folder(home) / name
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            tmp.write_bytes(data)
    return name


def _nulls(table: pa.Table) -> dict[str, int]:
    return {c: table[c].null_count for c in NULL_COUNTED}


def _add_sums(a: str, b: bytes) -> str:
    """Two multiset sums (hex, bytes) added modulo 2**256, as hex."""
    return ((int(a, 16) + int.from_bytes(b, "big")) % (1 << 256)).to_bytes(32, "big").hex()


def _digest(state: TableState) -> str:
    """The images table's digest: its column names, row count and the multiset sum of its rows'
    content hashes (``image_parts.row_hashes``: content columns and ``pixel_sha256``, never where
    the pixels sit), as the single-file table's was."""
    digest = hashlib.sha256(json.dumps({"columns": schema.IMAGES.names, "rows": state.rows,
                                        "row_hash": "sha256-json-sum-mod-2^256"}).encode())
    digest.update(bytes.fromhex(state.row_sum))
    return digest.hexdigest()
