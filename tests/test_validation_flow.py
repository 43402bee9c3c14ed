"""Validation as a Prefect flow on a real store: the gate, row quarantine on disk, artifacts, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from medmeta.errors import MedmetaError
from medmeta.home import Home
from medmeta.ingest.images_table import images_folder, legacy_images_file, read_images
from medmeta.schema import TABLES
from tests.conftest import TEST_KEY, ingested_home
from tests.test_cli import run_cli
from tests.test_validation_core import as_v2
from validation.gate import require_passed

pytestmark = pytest.mark.usefixtures("prefect_api")


def fill_v2(home: Path) -> None:
    """The store's tables in schema v2 (``as_v2``: a no-op once the ingest writes every column)."""
    store = {name: pd.read_parquet(home / "store" / f"{name}.parquet") for name in TABLES if name != "images"}
    for name, frame in as_v2(store).items():
        frame.to_parquet(home / "store" / f"{name}.parquet", index=False)  # images: written in full by ingest


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    from flows.validate import validate_flow

    home = ingested_home(tmp_path_factory.mktemp("validated"), patients=60, seed=11)
    fill_v2(home)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDMETA_PSEUDONYM_KEY", TEST_KEY)
        assert validate_flow(str(home))["success"]
    return home


def test_ingest_validates_its_snapshot_and_the_gate_lets_it_through(home):
    result = require_passed(Home(home))
    assert result["critical_failures"] == [] and result["rows_checked"] > 0
    docs = Path(result["data_docs"])
    assert docs.is_file() and docs.parent.parent.name == result["snapshot"]
    pages = [p.read_text() for p in docs.parent.rglob("*.html")]
    assert any("medmeta.observations" in page for page in pages), "a Data Docs page per table suite"
    roles = {c["role"] for c in result["label_coverage"]}
    assert roles <= {"meta_train", "meta_test_only", "too_few"} and "too_few" in roles


def test_the_report_is_a_prefect_artifact(home):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["medmeta-validation-report"])))
    assert artifacts and "Validation of snapshot" in artifacts[-1].data


def test_a_warning_fault_quarantines_exactly_its_rows(home, tmp_path, pseudonym_key):
    from flows.validate import validate_flow

    work = tmp_path / "home"
    shutil.copytree(home, work)
    observations = pd.read_parquet(work / "store" / "observations.parquet")
    glucose = observations.index[observations["code"] == "14749-6"][:3]
    observations.loc[glucose, "value"] = 110.0  # left in mg/dL
    observations.to_parquet(work / "store" / "observations.parquet", index=False)

    result = validate_flow(str(work))
    assert result["success"] and any(w["table"] == "observations" for w in result["warnings"])
    quarantine = pd.read_parquet(work / "validation" / result["snapshot"] / "quarantine.parquet")
    assert len(quarantine) == result["rows_quarantined"] == 3
    assert set(quarantine["table"]) == {"observations"} and quarantine["source"].notna().all()
    assert all(json.loads(r)["value"] == 110.0 for r in quarantine["record"])
    kept = pd.read_parquet(work / "validation" / result["snapshot"] / "tables" / "observations.parquet")
    assert len(kept) + len(quarantine) == len(observations)


def test_an_empty_snapshot_fails_critically_and_later_stages_refuse_it(tmp_path):
    (tmp_path / "landing").mkdir()
    (tmp_path / "landing" / "dx.csv").write_text("MRN,DX_CODE,DX_DATE,ATTENDING\n")  # a header and no rows
    from prefect.settings import PREFECT_API_URL

    env = {"MEDMETA_PSEUDONYM_KEY": TEST_KEY, "PREFECT_API_URL": PREFECT_API_URL.value()}
    ingest = run_cli("ingest", str(tmp_path / "landing"), "--home", str(tmp_path / "home"), "--json", env=env)
    assert ingest.returncode == 0 and json.loads(ingest.stdout)["validation"]["success"] is False
    result = run_cli("validate", "--home", str(tmp_path / "home"), "--json", env=env)
    assert result.returncode == 1 and "patients.not_empty" in result.stderr
    assert json.loads(result.stdout)["success"] is False
    with pytest.raises(MedmetaError, match="failed validation"):
        require_passed(Home(tmp_path / "home"))


def test_a_records_only_snapshot_passes_unless_its_delivery_promised_images(home, tmp_path):
    from prefect.settings import PREFECT_API_URL

    work = tmp_path / "home"
    shutil.copytree(home, work)
    images = read_images(Home(work))  # a records-only delivery: no image rows (the one-file layout, still read)
    shutil.rmtree(images_folder(Home(work)))
    pq.write_table(images.slice(0, 0), legacy_images_file(Home(work)))
    env = {"MEDMETA_PSEUDONYM_KEY": TEST_KEY, "PREFECT_API_URL": PREFECT_API_URL.value()}

    passed = run_cli("validate", "--home", str(work), "--json", env=env)
    assert passed.returncode == 0, passed.stderr[-2000:]
    assert json.loads(passed.stdout)["success"]
    result = require_passed(Home(work))  # the whole result, as recorded
    assert result["empty_tables"] == ["images"]
    assert result["require"] == {"tables": ["patients"], "any_of": ["conditions", "observations", "medication_exposures"]}

    promised = tmp_path / "images-promised.yaml"
    promised.write_text("require: {tables: [patients, images]}\n")
    failed = run_cli("validate", "--home", str(work), "--rules", str(promised), "--json", env=env)
    assert failed.returncode == 1 and "images.not_empty" in failed.stderr
    assert [(f["table"], f["expectation"]) for f in json.loads(failed.stdout)["critical_failures"]] == [("images", "not_empty")]
    with pytest.raises(MedmetaError, match=r"critical: images.not_empty"):
        require_passed(Home(work))


def test_a_bad_require_is_refused_before_anything_runs(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("require: {tables: [patients, xrays]}\n")
    result = run_cli("validate", "--home", str(tmp_path / "home"), "--rules", str(rules))
    assert result.returncode == 2 and str(rules) in result.stderr and "require.tables" in result.stderr
    assert "xrays" in result.stderr


def test_a_bad_rules_file_is_refused_before_anything_runs(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("tables:\n  patients:\n    - expectation: ExpectColumnValuesToBeBetween\n"
                     "      column: shoe_size\n      min_value: 0\n      severity: warning\n")
    result = run_cli("validate", "--home", str(tmp_path / "home"), "--rules", str(rules))
    assert result.returncode == 2 and "rules.yaml" in result.stderr and "shoe_size" in result.stderr
