"""The pixel cache grows by increments (issue 13 part 5): one content-addressed shard per ingest batch.

An ingest that adds k images writes k images' pixels; a rerun writes no shard; an incremental home
reads back the same pixels and has the same snapshot id as a from-scratch ingest; a home in the older
layout (one stacked .npy per snapshot, pixels inside the staging files) stays readable and a rerun on
it works; a writer killed mid-batch leaves no half shard. Real ingests, no mocks.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import TEST_KEY

ROOT = Path(__file__).resolve().parents[1]
SIZE = 64
IMAGE_BYTES = SIZE * SIZE * 2  # float16
NPY_HEADER = 128
BASE, ADDED, BATCH = 24, 4, 8


def _ingest(landing: Path, home: Path, config: Path) -> dict:
    from flows.ingest import ingest_flow

    return ingest_flow(str(landing), str(home), settings=str(config), workers=1, run_validation=False)


def _bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def _shards(home: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in (home / "cache" / "pixels" / "shards").glob("*.npy")}


def _pixels_in_table_order(home: Path) -> tuple[pd.DataFrame, np.ndarray]:
    from medmeta.home import Home
    from medmeta.tasksets.snapshot import ValidatedSnapshot

    from medmeta.ingest.images_table import read_images

    images = read_images(Home(home)).to_pandas()
    return images, ValidatedSnapshot(Home(home), "test", {}, {}).pixels(images)


def _age(folder: Path) -> None:
    """Files that landed a while ago: a stat younger than two seconds is not trusted (ledger.py)."""
    old = time.time() - 60
    for path in folder.rglob("*"):
        os.utime(path, (old, old))


@pytest.fixture(scope="module")
def homes(tmp_path_factory, prefect_api):
    from medmeta.synth.generate import generate_images

    root = tmp_path_factory.mktemp("pixel-shards")
    config = root / "small-batches.yaml"
    config.write_text(f"batch_size: {BATCH}\n")
    landing, added = root / "landing", root / "added"
    generate_images(landing / "first", count=BASE, size=96, seed=11)
    generate_images(added, count=ADDED, size=96, seed=12)
    _age(landing)
    _age(added)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDMETA_PSEUDONYM_KEY", TEST_KEY)
        home = root / "incremental"
        steps = {"first": _ingest(landing, home, config)}
        shards_first = _shards(home)
        before = {"cache": _bytes(home / "cache"), "store": _bytes(home / "store")}
        steps["noop"] = _ingest(landing, home, config)
        after_noop = {"cache": _bytes(home / "cache"), "store": _bytes(home / "store"), "shards": _shards(home)}
        shutil.copytree(added, landing / "second")
        steps["added"] = _ingest(landing, home, config)
        after_added = {"cache": _bytes(home / "cache"), "store": _bytes(home / "store"), "shards": _shards(home)}
        scratch = root / "scratch"
        steps["scratch"] = _ingest(landing, scratch, config)
        yield {"root": root, "config": config, "landing": landing, "home": home, "scratch": scratch,
               "steps": steps, "shards_first": shards_first, "before": before, "after_noop": after_noop,
               "after_added": after_added}


def test_a_rerun_writes_no_shard_and_keeps_the_snapshot(homes):
    steps, after = homes["steps"], homes["after_noop"]
    assert steps["noop"]["files_unchanged"] == BASE and steps["noop"]["files_ingested"] == 0
    assert steps["noop"]["snapshot"] == steps["first"]["snapshot"]
    assert after["shards"] == homes["shards_first"], "a rerun writes no shard"
    assert after["cache"] == homes["before"]["cache"] and after["store"] == homes["before"]["store"]


def test_adding_k_images_writes_k_images_of_pixels(homes):
    steps, noop, added = homes["steps"], homes["after_noop"], homes["after_added"]
    assert steps["added"]["files_ingested"] == ADDED and steps["added"]["images"] == BASE + ADDED
    new = set(added["shards"]) - set(noop["shards"])
    assert set(noop["shards"]) <= set(added["shards"]), "earlier shards are kept"
    assert len(new) == 1, "the 4 new files were one batch"
    grown = added["cache"] - noop["cache"]
    assert ADDED * IMAGE_BYTES <= grown <= ADDED * IMAGE_BYTES + NPY_HEADER
    # the store rewrites its tables (rows only); it holds no pixels: far less than the home's images
    assert added["store"] - noop["store"] < (BASE + ADDED) * IMAGE_BYTES // 2
    # the images table grew by one part holding the new rows; the first part is as it was
    from medmeta.home import Home
    from medmeta.ingest.images_table import TableState

    assert [part["rows"] for part in TableState.read(Home(homes["home"])).parts] == [BASE, ADDED]


def test_shards_are_named_by_the_sha256_of_their_bytes(homes):
    shards = list((homes["home"] / "cache" / "pixels" / "shards").glob("*.npy"))
    assert len(shards) == -(-BASE // BATCH) + 1
    for shard in shards:
        assert shard.name == hashlib.sha256(shard.read_bytes()).hexdigest() + ".npy"
        stack = np.load(shard)
        assert stack.dtype == np.float16 and stack.shape[1:] == (SIZE, SIZE)
    assert not list((homes["home"] / "store" / "parts" / "images-64").glob("*.npy")), "no pixels in the store"
    for batch in (homes["home"] / "store" / "parts" / "images-64").glob("*.parquet"):
        assert "pixels" not in pq.read_schema(batch).names


def test_an_incremental_home_equals_a_from_scratch_ingest(homes):
    steps = homes["steps"]
    assert steps["added"]["snapshot"] == steps["scratch"]["snapshot"]
    images, pixels = _pixels_in_table_order(homes["home"])
    fresh_images, fresh_pixels = _pixels_in_table_order(homes["scratch"])
    content = [c for c in images.columns if c not in ("pixel_path", "pixel_index")]
    pd.testing.assert_frame_equal(images[content], fresh_images[content])
    assert pixels.shape == (BASE + ADDED, SIZE, SIZE) and np.array_equal(pixels, fresh_pixels)
    for table in ("patients", "record_quarantine"):
        assert (homes["home"] / "store" / f"{table}.parquet").read_bytes() == \
            (homes["scratch"] / "store" / f"{table}.parquet").read_bytes()


def test_a_small_addition_leaves_the_staged_rows_index_as_it_is(homes, tmp_path, monkeypatch):
    """A run adding a few images to a large home reads their batch file and does not rewrite the index
    of every staged row (``INDEX_SLACK_SHARE``); the store is still the from-scratch one, and the next
    rerun finds every file unchanged."""
    from medmeta.ingest import image_parts

    landing, home = tmp_path / "landing", tmp_path / "home"
    shutil.copytree(homes["landing"] / "first", landing / "first", copy_function=shutil.copy2)
    monkeypatch.setenv("MEDMETA_PSEUDONYM_KEY", TEST_KEY)
    _ingest(landing, home, homes["config"])
    index = home / "store" / "parts" / "images-64" / image_parts.INDEX_FILE
    before = index.read_bytes()
    monkeypatch.setattr(image_parts, "INDEX_SLACK_SHARE", 2)  # 4 new rows against 24: "a few"
    shutil.copytree(homes["landing"] / "second", landing / "second", copy_function=shutil.copy2)
    added = _ingest(landing, home, homes["config"])
    assert index.read_bytes() == before, "the index was rewritten for 4 new images"
    assert added["files_ingested"] == ADDED and added["snapshot"] == homes["steps"]["scratch"]["snapshot"]
    again = _ingest(landing, home, homes["config"])
    assert again["files_unchanged"] == BASE + ADDED and again["snapshot"] == added["snapshot"]
    assert index.read_bytes() == before


def test_pixels_are_the_decoded_images(homes):
    """Each image's cached pixels are what the decoder gives for its file (the shards hold the right image)."""
    import pydicom

    from medmeta.dicom.pixels import decode_pixels

    images, pixels = _pixels_in_table_order(homes["home"])
    by_source = {}
    for path in sorted(homes["landing"].rglob("*.dcm"))[:6]:
        ds = pydicom.dcmread(path)
        by_source[hashlib.sha256(path.read_bytes()).hexdigest()] = decode_pixels(ds, size=SIZE).array.astype(np.float16)
    rows = images.reset_index(drop=True)
    for source, expected in by_source.items():
        at = rows.index[rows["source"] == source]
        assert len(at) == 1 and np.array_equal(pixels[at[0]], expected)


def _old_layout(home: Path) -> None:
    """Turn ``home`` into the layout older versions wrote: the pixels inside each staging file, one
    stacked .npy per snapshot that every images row points into, no shards, no staging index."""
    staging = home / "store" / "parts" / "images-64"
    for batch in staging.glob("*.parquet"):
        table = pq.read_table(batch)
        pixels = [np.load(home / "cache" / "pixels" / "shards" / s, mmap_mode="r")[i].tobytes()
                  for s, i in zip(table["shard"].to_pylist(), table["shard_index"].to_pylist())]
        table = table.drop_columns(["shard", "shard_index", "pixel_sha256"]).append_column("pixels", pa.array(pixels, pa.binary()))
        pq.write_table(table, batch, compression="none")
    (staging / "staged-rows.index").unlink()
    images, stacked = _pixels_in_table_order(home)
    shutil.rmtree(home / "cache" / "pixels" / "shards")
    digest = hashlib.sha256(stacked.tobytes()).hexdigest()[:24]
    np.save(home / "cache" / "pixels" / f"{digest}.npy", stacked, allow_pickle=False)
    images = images.assign(pixel_path=f"cache/pixels/{digest}.npy", pixel_index=range(len(images)))
    shutil.rmtree(home / "store" / "images")  # the images table as one file, as older versions wrote it
    pq.write_table(pa.Table.from_pandas(images, preserve_index=False), home / "store" / "images.parquet")
    manifest = json.loads((home / "store" / "manifest.json").read_text())
    manifest.pop("consolidation_inputs")
    (home / "store" / "manifest.json").write_text(json.dumps(manifest))


def test_an_old_layout_home_stays_readable_and_a_rerun_works(homes, monkeypatch):
    old = homes["root"] / "old-layout"
    shutil.copytree(homes["scratch"], old)
    _, expected = _pixels_in_table_order(homes["scratch"])
    _old_layout(old)
    images, pixels = _pixels_in_table_order(old)  # the old snapshot, as task sets read it
    assert images["pixel_path"].nunique() == 1 and np.array_equal(pixels, expected)

    monkeypatch.setenv("MEDMETA_PSEUDONYM_KEY", TEST_KEY)
    summary = _ingest(homes["landing"], old, homes["config"])
    assert summary["files_ingested"] == 0 and summary["snapshot"] == homes["steps"]["scratch"]["snapshot"]
    images, pixels = _pixels_in_table_order(old)
    assert images["pixel_path"].str.startswith("cache/pixels/shards/").all() and np.array_equal(pixels, expected)
    assert len(list(old.glob("cache/pixels/*.npy"))) == 1, "the old snapshot's stacked cache is kept"
    assert not (old / "store" / "images.parquet").exists(), "the one-file images table became parts"


_WRITER = """
import sys, numpy as np
from medmeta.ingest.image_parts import ImagePayload, write_image_batch
parts, n = sys.argv[1], 0
rng = np.random.default_rng(0)
while True:
    payloads = [ImagePayload({"source": f"{n:08d}{i:04d}", "image_id": f"{n}.{i}"},
                             rng.random((256, 256), dtype=np.float32).astype(np.float16)) for i in range(64)]
    write_image_batch(__import__("pathlib").Path(parts), 256, payloads)
    n += 1
"""


def test_a_writer_killed_mid_batch_leaves_no_half_shard(tmp_path):
    """kill -9 a process writing batch after batch: every shard there is whole, every staged row's shard
    exists, and only dot-named temp files (removed by the next run) can be left."""
    from medmeta.home import Home
    from medmeta.ingest.image_parts import known_image_sources
    from medmeta.ingest.setup import remove_interrupted_writes

    home = Home(tmp_path / "home").ensure()
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(home.parts)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(home.pixel_shards.glob("*.npy"))) < 3:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    shards = list(home.pixel_shards.glob("*.npy"))
    assert len(shards) >= 3
    for shard in shards:
        assert shard.name == hashlib.sha256(shard.read_bytes()).hexdigest() + ".npy", "a half-written shard"
    for batch in (home.parts / "images-256").glob("*.parquet"):
        for name in set(pq.read_table(batch, columns=["shard"])["shard"].to_pylist()):
            assert (home.pixel_shards / name).is_file()
    assert len(known_image_sources(home.parts, 256)) % 64 == 0
    remove_interrupted_writes(home)
    assert not [p for p in home.pixel_shards.iterdir() if p.name.startswith(".")]


def test_images_staged_by_a_killed_run_whose_files_then_left_enter_no_table(homes, tmp_path, monkeypatch):
    """A run killed after staging a batch, before the ledger recorded it, leaves staged rows no file holds
    as settled; when those files are gone by the next run, which adds others, the images table extended by
    the active set's growth takes the new files' rows only: the snapshot is the from-scratch one."""
    from medmeta.home import Home
    from medmeta.ingest import image_parts
    from medmeta.ingest.image_parts import stage_batch
    from medmeta.ingest.images_table import read_images
    from medmeta.ingest.pool import WorkerPool
    from medmeta.ingest.setup import IngestSetup
    from medmeta.landing.walk import discover
    from medmeta.synth.generate import generate_images

    landing, home, killed = tmp_path / "landing", tmp_path / "home", tmp_path / "killed"
    shutil.copytree(homes["landing"] / "first", landing / "first", copy_function=shutil.copy2)
    shutil.copytree(homes["landing"] / "second", killed / "second", copy_function=shutil.copy2)
    monkeypatch.setenv("MEDMETA_PSEUDONYM_KEY", TEST_KEY)
    for _ in range(2):
        _ingest(landing, home, homes["config"])
    setup = IngestSetup.create(str(killed), str(home), str(homes["config"]), workers=1)
    with WorkerPool(setup.worker_context, 1) as pool:  # staged, then killed: the ledger never records it
        stage_batch(setup.home.parts, SIZE, pool.map(discover(setup.source, setup.config)))
    generate_images(landing / "third", count=2, size=96, seed=13)
    _age(landing / "third")
    monkeypatch.setattr(image_parts, "INDEX_SLACK_SHARE", 1)  # 6 new rows against 24: "a few" (no index rewrite)
    after = _ingest(landing, home, homes["config"])
    scratch = _ingest(landing, tmp_path / "scratch", homes["config"])
    assert after["files_ingested"] == 2 and after["images"] == BASE + 2
    assert after["snapshot"] == scratch["snapshot"]
    assert sorted(read_images(Home(home))["image_id"].to_pylist()) == \
        sorted(read_images(Home(tmp_path / "scratch"))["image_id"].to_pylist())
