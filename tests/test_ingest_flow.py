"""The ingest flow end to end, on a real Prefect API: the synthetic cohort with every hostile
file, accounting, idempotency, incremental runs, and nothing written outside the home."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from medmeta.errors import MedmetaError
from medmeta.home import Home
from medmeta.ingest.images_table import read_images

pytestmark = pytest.mark.usefixtures("prefect_api")


def tree_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from medmeta.synth.generate import generate_cohort

    base = tmp_path_factory.mktemp("cohort")
    landing = base / "landing"
    summary = generate_cohort(landing, patients=120, seed=3, faults=True)
    return landing, summary


@pytest.fixture(scope="module")
def ingested(cohort, tmp_path_factory):
    from flows.ingest import ingest_flow
    from tests.conftest import TEST_KEY

    landing, synth = cohort
    home = tmp_path_factory.mktemp("home") / "h"
    outside_before = tree_files(landing.parent)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDMETA_PSEUDONYM_KEY", TEST_KEY)
        summary = ingest_flow(str(landing), str(home))
    return landing, synth, home, summary, outside_before


def _ledger_entries(home: Path, landing: Path) -> dict[str, dict]:
    """The ledger's entries of ``landing``, keyed by path token (the ledger holds no names)."""
    from medmeta.ingest.landings import landing_token
    from medmeta.pseudonyms import Pseudonymizer
    from tests.conftest import TEST_KEY

    return json.loads((home / "ledger.json").read_text())["sources"][landing_token(landing, Pseudonymizer(TEST_KEY))]


def _token(path: str) -> str:
    from medmeta.pseudonyms import Pseudonymizer
    from tests.conftest import TEST_KEY

    return Pseudonymizer(TEST_KEY).path_token(path)


def test_every_file_is_accounted_for(ingested):
    landing, synth, home, summary, _ = ingested
    assert summary["files_seen"] == summary["files_ingested"] + summary["files_unchanged"] + summary["files_quarantined"]
    assert summary["files_unchanged"] == 0 and summary["files_ingested"] > 0
    entries = _ledger_entries(home, landing)
    files = {token: entry for token, entry in entries.items() if entry["status"] != "archive"}
    assert len(files) == summary["files_seen"]
    # every zip archive has its own stat in the ledger (the watcher's first look knows it): as an entry of
    # its own when its entries were read (the synthetic zips: their bad entries are refused one by one)
    quarantined = {q["token"] for q in summary["quarantined"]}
    zips = {_token(p.relative_to(landing).as_posix()): p for p in landing.rglob("*")
            if p.is_file() and p.read_bytes()[:4] == b"PK\x03\x04"}
    # (a stat younger than STAT_SETTLE_NS when ingest recorded it is not kept: the fixture's files are fresh)
    from medmeta.ingest.ledger import STAT_SETTLE_NS

    read_zips = {token for token in zips if token not in quarantined}
    assert len(read_zips) >= 2, "the synthetic landing holds zip archives"
    recorded_before = (home / "ledger.json").stat().st_mtime_ns - STAT_SETTLE_NS - 1_000_000_000
    settled = {t for t in read_zips if zips[t].stat().st_mtime_ns < recorded_before}
    archives = {t for t, e in entries.items() if e["status"] == "archive"}
    assert settled <= archives <= read_zips
    assert all(entries[t]["size"] == zips[t].stat().st_size for t in zips if "size" in entries.get(t, {}))


def test_every_hostile_file_is_quarantined_with_its_reason(ingested):
    from medmeta.ingest.summary import quarantined_names

    _, synth, home, summary, _ = ingested
    got = {q["path"]: q["reason"].split(":", 1)[0] for q in quarantined_names(summary)}
    expected = synth["expected_faults"]
    assert {path: got.get(path) for path in expected} == expected
    assert set(got) == set(expected), "only the planted faults are quarantined"
    assert {q["token"] for q in summary["quarantined"]} == {_token(path) for path in expected}
    reasons = [json.loads(p.read_text()) for p in (home / "quarantine").glob("*/reason.json")]
    assert set(got) <= {r["path"] for r in reasons}


def test_row_faults_land_in_record_quarantine(ingested):
    landing, synth, home, summary, _ = ingested
    ledger = _ledger_entries(home, landing)
    rejects = pd.read_parquet(home / "store" / "record_quarantine.parquet")
    got = {(r.source, r.location, r.reason.split(":", 1)[0]) for r in rejects.itertuples()}
    for fault in synth["expected_row_faults"]:
        assert (ledger[_token(fault["path"])]["sha256"], fault["location"], fault["code"]) in got
    assert summary["rows_quarantined"] >= len(synth["expected_row_faults"])


def test_store_is_canonical_and_linked(ingested):
    _, synth, home, summary, _ = ingested
    store = home / "store"
    patients = pd.read_parquet(store / "patients.parquet")
    images = read_images(Home(home)).to_pandas()
    assert patients["patient_id"].is_unique
    assert summary["patients"] == len(patients) > 0
    assert set(images["patient_id"]) <= set(patients["patient_id"]), "every image links to a patient"
    assert {"CT", "MR"} <= set(images["modality"])
    observations = pd.read_parquet(store / "observations.parquet")
    from medmeta.records.units import default_units

    units = default_units()
    for code, unit in observations[["code", "unit"]].drop_duplicates().itertuples(index=False):
        assert unit == (units.canonical_unit(code) or unit)
    for table in ("conditions", "observations", "medication_exposures"):
        frame = pd.read_parquet(store / f"{table}.parquet")
        assert len(frame) > 0 and set(frame["patient_id"]) <= set(patients["patient_id"]) | set(frame["patient_id"])
    np = __import__("numpy")
    assert images["pixel_path"].str.startswith("cache/pixels/shards/").all()
    pixels = np.stack([np.load(home / path, mmap_mode="r")[index]
                       for path, index in zip(images["pixel_path"], images["pixel_index"])])
    assert pixels.shape == (len(images), 64, 64) and pixels.dtype.name == "float16"
    assert 0 <= pixels.min() <= pixels.max() <= 1


def test_nothing_is_written_outside_the_home(ingested):
    landing, _, home, _, outside_before = ingested
    assert landing.parent not in home.parents
    assert tree_files(landing.parent) == outside_before, "the landing zone and its neighbours are untouched"
    assert not list(Path("/tmp").glob("escaped.txt")) and not list(home.parent.parent.glob("escaped.txt"))


def test_rerun_is_idempotent(ingested):
    from flows.ingest import ingest_flow
    from tests.conftest import TEST_KEY

    landing, _, home, first, _ = ingested
    store_before = tree_files(home / "store")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDMETA_PSEUDONYM_KEY", TEST_KEY)
        again = ingest_flow(str(landing), str(home))
    assert again["files_ingested"] == 0
    assert again["files_unchanged"] == first["files_ingested"]
    assert again["files_quarantined"] == first["files_quarantined"]
    assert again["snapshot"] == first["snapshot"]
    assert again["rows_quarantined"] == first["rows_quarantined"]
    assert tree_files(home / "store") == store_before


def test_incremental_ingest_adds_only_the_new_file(ingested, tmp_path):
    from flows.ingest import ingest_flow
    from tests.conftest import TEST_KEY

    landing, _, home, first, _ = ingested
    work = tmp_path / "landing"
    shutil.copytree(landing, work, symlinks=True)
    work_home = tmp_path / "home"
    shutil.copytree(home, work_home)
    (work / "site_a" / "late_diagnoses.csv").write_text("MRN,DX_CODE,DX_DATE,ATTENDING\nA9999999,J189,2024-01-05,Dr X\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDMETA_PSEUDONYM_KEY", TEST_KEY)
        first_in_work = ingest_flow(str(work), str(work_home))  # a new SOURCE path: same contents are unchanged
    assert first_in_work["files_ingested"] == 1
    assert first_in_work["snapshot"] != first["snapshot"]
    assert first_in_work["tables"]["conditions"] == first["tables"]["conditions"] + 1


def test_a_staged_file_lost_after_a_claimed_rerun_is_found_and_staged_again(ingested, tmp_path):
    """A rerun claims that every settled file's content is staged (the ledger's ``staged``), so the next
    one does not look at each content hash; an image batch file removed behind its back changes the
    staging's listing, so the next run checks, reads the files whose images were lost, stages them again
    and builds the same snapshot."""
    import pyarrow.parquet as pq

    from flows.ingest import ingest_flow
    from medmeta.ingest.ledger import _LOADED
    from tests.conftest import TEST_KEY

    landing, _, home, first, _ = ingested
    work_home = tmp_path / "home"
    shutil.copytree(home, work_home)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDMETA_PSEUDONYM_KEY", TEST_KEY)
        for _ in range(2):
            again = ingest_flow(str(landing), str(work_home), run_validation=False)
        assert again["files_ingested"] == 0 and again["snapshot"] == first["snapshot"]
        assert json.loads((work_home / "ledger.json").read_text()).get("staged") or \
            b'"staged":{"' in (work_home / "ledger.json.journal").read_bytes()
        staging = work_home / "store" / "parts" / "images-64"
        batch = max(staging.glob("*.parquet"), key=lambda path: pq.read_metadata(path).num_rows)
        lost = pq.read_metadata(batch).num_rows
        batch.unlink()
        _LOADED.clear()
        after = ingest_flow(str(landing), str(work_home), run_validation=False)
    assert after["files_ingested"] == lost > 0, "the files whose images were lost are read and staged again"
    assert after["snapshot"] == first["snapshot"]


def test_a_different_key_is_refused(ingested, monkeypatch):
    from flows.ingest import ingest_flow

    landing, _, home, _, _ = ingested
    monkeypatch.setenv("MEDMETA_PSEUDONYM_KEY", "another-key-entirely-0123456789")
    with pytest.raises(MedmetaError, match="pseudonym key differs"):
        ingest_flow(str(landing), str(home))


def test_fhir_resources_not_read_are_counted_not_dropped_silently(ingested, tmp_path):
    from flows.ingest import ingest_flow
    from tests.conftest import TEST_KEY

    _, _, home, first, _ = ingested
    work_home = tmp_path / "home"
    shutil.copytree(home, work_home)
    landing = tmp_path / "landing"
    landing.mkdir()
    bundle = {"resourceType": "Bundle", "type": "collection", "meta": {"source": "site_b"}, "entry": [
        {"resource": {"resourceType": "Encounter", "status": "finished"}},
        {"resource": {"resourceType": "Encounter", "status": "finished"}},
        {"resource": {"resourceType": "Patient", "id": "x1", "gender": "female",
                      "identifier": [{"type": {"coding": [{"code": "MR"}]}, "value": "B7777777"}]}},
    ]}
    (landing / "encounters.json").write_text(json.dumps(bundle))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDMETA_PSEUDONYM_KEY", TEST_KEY)
        summary = ingest_flow(str(landing), str(work_home), run_validation=False)
    assert first["resources_ignored"] == {}
    assert summary["files_ingested"] == 1 and summary["resources_ignored"] == {"Encounter": 2}
    manifest = json.loads((work_home / "store" / "manifest.json").read_text())
    assert manifest["resources_ignored"] == {"Encounter": 2}


def test_a_store_written_by_schema_1_is_refused_with_how_to_rebuild_it(tmp_path):
    import subprocess
    import sys

    home = tmp_path / "home"
    (home / "store").mkdir(parents=True)
    (home / "store" / "manifest.json").write_text(json.dumps({"snapshot": "abc", "schema_version": 1}))
    (tmp_path / "landing").mkdir()
    env = {**os.environ, "MEDMETA_PSEUDONYM_KEY": "k" * 32}
    for args in (["ingest", str(tmp_path / "landing")], ["validate"], ["tasks", "build", "--by", "disease"]):
        result = subprocess.run([sys.executable, "-m", "medmeta.cli", *args, "--home", str(home)],
                                capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[1])
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "schema version 1" in lines[0] and "ingest into a new home" in lines[0], args
