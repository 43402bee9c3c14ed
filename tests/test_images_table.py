"""The images table kept as parts (``medmeta.ingest.images_table``): whatever sequence of ingests built
it (rows added in new batches, files replaced or quarantined so their rows leave, a new row for an
image already there, a compaction), ``read_images`` gives the one table a from-scratch consolidation of
the same staged rows gives, and its digest (the snapshot id's) is that table's. The expected table is
computed here, in plain Python, from the rows. Real Parquet files in a real home folder, no Prefect."""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medmeta import schema
from medmeta.home import Home
from medmeta.ingest import images_table
from medmeta.ingest.image_parts import INDEX_SCHEMA, STAGING_SCHEMA, row_hashes
from medmeta.ingest.images_table import (
    TableState, images_folder, images_present, legacy_images_file, read_images, update_images_table)


def _batch(name: str, rows: list[tuple[str, str]]) -> pa.Table:
    """Staged rows of one batch file ``name``: ``(source, image_id)`` each, in shard ``name``.npy."""
    columns = {}
    for field in STAGING_SCHEMA:
        if field.name == "source":
            columns["source"] = [source for source, _ in rows]
        elif field.name == "image_id":
            columns["image_id"] = [image for _, image in rows]
        elif field.name == "shard":
            columns["shard"] = [f"{name}.npy"] * len(rows)
        elif field.name == "shard_index":
            columns["shard_index"] = list(range(len(rows)))
        elif field.name == "modality":
            columns["modality"] = [None if source.endswith("0") else "CT" for source, _ in rows]
        elif pa.types.is_string(field.type):
            columns[field.name] = [f"{field.name}-{source}" for source, _ in rows]
        elif pa.types.is_date(field.type):
            columns[field.name] = [None] * len(rows)
        else:
            columns[field.name] = [len(image) % 5 for _, image in rows]
    table = pa.table(columns, schema=STAGING_SCHEMA)
    table = table.append_column(INDEX_SCHEMA.field("batch"), pa.array([f"{name}.parquet"] * len(rows), pa.string()))
    return table.append_column(INDEX_SCHEMA.field("row_sha256"), row_hashes(table))


def _active(batches: list[pa.Table], inactive: set[str]) -> pa.Table:
    """What ``StagedImages.rows`` hands consolidation: the staged rows of the active sources."""
    rows = pa.concat_tables(batches) if batches else INDEX_SCHEMA.empty_table()
    return rows.filter(pa.array([s not in inactive for s in rows["source"].to_pylist()], pa.bool_()))


def _expected(staged: pa.Table) -> tuple[list[dict], str]:
    """The table a from-scratch consolidation writes, and its digest, computed row by row."""
    best: dict = {}
    for row in staged.to_pylist():
        key = (row["source"], row["shard"], row["shard_index"])
        if row["image_id"] not in best or key < best[row["image_id"]][0]:
            best[row["image_id"]] = (key, row)
    rows = [best[image][1] for image in sorted(best)]
    table = [{**{c: r[c] for c in schema.IMAGES.names if c not in ("pixel_path", "pixel_index")},
              "pixel_path": f"cache/pixels/shards/{r['shard']}", "pixel_index": r["shard_index"]} for r in rows]
    total = sum(int.from_bytes(r["row_sha256"], "big") for r in rows) % 2**256
    digest = hashlib.sha256(json.dumps({"columns": schema.IMAGES.names, "rows": len(rows),
                                        "row_hash": "sha256-json-sum-mod-2^256"}).encode())
    digest.update(total.to_bytes(32, "big"))
    return table, digest.hexdigest()


def _check(home: Home, staged: pa.Table, result) -> None:
    rows, digest = _expected(staged)
    assert read_images(home).to_pylist() == rows
    assert result.digest == digest and result.rows == len(rows)
    assert result.nulls["modality"] == sum(r["modality"] is None for r in rows)


def test_an_addition_writes_one_part_of_the_new_rows_and_reads_back_the_whole_table(tmp_path):
    home = Home(tmp_path / "home")
    first = [_batch(f"b{n}", [(f"s{n}{i}", f"1.{n}.{i}") for i in range(50)]) for n in range(3)]
    _check(home, _active(first, set()), update_images_table(home, _active(first, set()), 64))
    [part] = [p for p in images_folder(home).glob("*.parquet")]
    before = part.read_bytes()
    added = first + [_batch("b9", [("s91", "1.9.1"), ("s92", "1.9.2")])]
    result = update_images_table(home, _active(added, set()), 64)
    _check(home, _active(added, set()), result)
    state = TableState.read(home)
    assert [p["rows"] for p in state.parts] == [150, 2] and part.read_bytes() == before, "the old part untouched"
    again = update_images_table(home, _active(added, set()), 64)  # nothing new: nothing written
    assert again == result and TableState.read(home) == state


def test_rows_that_leave_or_a_new_row_for_a_held_image_rewrite_the_table(tmp_path):
    home = Home(tmp_path / "home")
    batches = [_batch("b1", [("s1", "1.1"), ("s2", "1.2"), ("s5", "1.5")])]
    update_images_table(home, _active(batches, set()), 64)
    batches.append(_batch("b2", [("s0", "1.2"), ("s3", "1.3")]))  # s0 < s2: the new row wins image 1.2
    _check(home, _active(batches, set()), update_images_table(home, _active(batches, set()), 64))
    assert len(TableState.read(home).parts) == 1
    batches.append(_batch("b3", [("s9", "1.3"), ("s4", "1.4")]))  # s9 > s3: the held row stays
    _check(home, _active(batches, set()), update_images_table(home, _active(batches, set()), 64))
    _check(home, _active(batches, {"s0"}), update_images_table(home, _active(batches, {"s0"}), 64))  # s2 wins again
    _check(home, _active(batches, {"s0"}), update_images_table(home, _active(batches, {"s0"}), 64))
    assert sorted(p.name for p in images_folder(home).iterdir()) == sorted(
        [p["file"] for p in TableState.read(home).parts] + ["table.json"]), "no part left that the table does not name"


def test_past_max_parts_the_table_is_compacted(tmp_path, monkeypatch):
    monkeypatch.setattr(images_table, "MAX_PARTS", 3)
    home = Home(tmp_path / "home")
    batches = []
    for n in range(6):
        batches.append(_batch(f"b{n}", [(f"s{n}a", f"1.{5 - n}"), (f"s{n}b", f"2.{n}")]))
        result = update_images_table(home, _active(batches, set()), 64)
        _check(home, _active(batches, set()), result)
        assert len(TableState.read(home).parts) <= 3
    assert len(list(images_folder(home).glob("*.parquet"))) == len(TableState.read(home).parts)


def test_a_home_in_the_one_file_layout_is_read_then_replaced_by_parts(tmp_path):
    home = Home(tmp_path / "home")
    batches = [_batch("b1", [("s1", "1.1"), ("s2", "1.2")])]
    rows, _ = _expected(_active(batches, set()))
    home.store.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema.IMAGES), legacy_images_file(home))
    assert images_present(home) and read_images(home).to_pylist() == rows
    _check(home, _active(batches, set()), update_images_table(home, _active(batches, set()), 64))
    assert not legacy_images_file(home).exists() and images_present(home)


def test_another_image_size_rewrites_the_table(tmp_path):
    home = Home(tmp_path / "home")
    batches = [_batch("b1", [("s1", "1.1")])]
    update_images_table(home, _active(batches, set()), 64)
    update_images_table(home, _active(batches, set()), 128)
    assert TableState.read(home).image_size == 128


_steps = st.lists(st.one_of(
    st.tuples(st.just("add"), st.lists(st.tuples(st.integers(0, 30), st.integers(0, 12)), min_size=1, max_size=6)),
    st.tuples(st.just("drop"), st.integers(0, 30)),
    st.tuples(st.just("restore"), st.integers(0, 30))), min_size=1, max_size=10)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=_steps)
def test_any_sequence_of_ingests_reads_back_the_from_scratch_table(tmp_path_factory, steps):
    """Batches added (sources and image ids drawn from small pools: clashes happen), sources made
    inactive and active again; after each consolidation the table is the from-scratch one."""
    images_table.MAX_PARTS, keep = 4, images_table.MAX_PARTS
    try:
        home = Home(tmp_path_factory.mktemp("home"))
        batches, inactive = [], set()
        for n, (kind, arg) in enumerate(steps):
            if kind == "add":
                batches.append(_batch(f"b{n}", sorted({f"s{source:02d}": f"1.{image}" for source, image in arg}.items())))
            elif kind == "drop":
                inactive.add(f"s{arg:02d}")
            else:
                inactive.discard(f"s{arg:02d}")
            staged = _active(batches, inactive)
            _check(home, staged, update_images_table(home, staged, 64))
    finally:
        images_table.MAX_PARTS = keep


@pytest.mark.parametrize("columns", [["image_id", "pixel_path"], None])
def test_read_images_selects_columns_in_table_order(tmp_path, columns):
    home = Home(tmp_path / "home")
    batches = [_batch("b1", [("s3", "1.3"), ("s1", "1.1")])]
    update_images_table(home, _active(batches, set()), 64)
    batches.append(_batch("b2", [("s2", "1.2")]))
    update_images_table(home, _active(batches, set()), 64)
    table = read_images(home, columns)
    assert table.column_names == (columns or schema.IMAGES.names)
    assert table["image_id"].to_pylist() == ["1.1", "1.2", "1.3"]
