"""Real third-party exports end to end: ingest, validation, task sets and a published model.

The exports come from ../shared/realdata (copied into tmp_path; never committed). What the input
holds is counted here with plain ``json`` and ``csv``, never with medmeta's code; what medmeta kept
is read from the validated tables later stages read (``H/validation/<snapshot>/tables``).
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.realdata import BULK_10P, BUNDLES_100P, OMOP_27P, REALDATA, needs_realdata

ROOT = Path(__file__).resolve().parents[1]
EXCLUDED_STATUS = {"refuted", "entered-in-error"}

pytestmark = [needs_realdata, pytest.mark.slow]


def medmeta(*args: str, home: Path, env_key: str) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "MEDMETA_PSEUDONYM_KEY": env_key}
    return subprocess.run([sys.executable, "-m", "medmeta.cli", *args, "--home", str(home)], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=1200)


def validated(home: Path, table: str):
    snapshot = json.loads((home / "store" / "manifest.json").read_text())["snapshot"]
    return pq.read_table(home / "validation" / snapshot / "tables" / f"{table}.parquet").to_pandas()


def ingest_export(name: str, folder: Path) -> tuple[Path, Path, dict]:
    """A copy of the shared export ``name`` ingested into a fresh home: (home, the copy, the summary)."""
    (folder / "landing").mkdir()
    archive = folder / "landing" / name
    archive.write_bytes((REALDATA / name).read_bytes())
    home = folder / "home"
    result = medmeta("ingest", str(folder / "landing"), "--json", home=home, env_key="realdata-test-key-0123456789")
    assert result.returncode == 0, result.stderr[-2000:]
    return home, archive, json.loads(result.stdout)


def count_bundles(archive: Path) -> Counter:
    """Conditions (refuted / entered-in-error apart), MedicationRequests, numeric values of Observations
    and their components, per the FHIR they came in."""
    counts: Counter = Counter()
    with zipfile.ZipFile(archive) as z:
        for name in z.namelist():
            if not name.endswith(".json"):
                continue
            for entry in json.loads(z.read(name)).get("entry", []):
                resource = entry["resource"]
                kind = resource["resourceType"]
                if kind == "Condition":
                    status = {c.get("code") for c in (resource.get("verificationStatus") or {}).get("coding", [])}
                    counts["condition_excluded" if status & EXCLUDED_STATUS else "condition"] += 1
                elif kind == "MedicationRequest":
                    counts["medication"] += 1
                elif kind == "Observation" and resource.get("status") not in ("cancelled", "entered-in-error"):
                    parts = [resource, *resource.get("component", [])]
                    counts["numeric"] += sum(isinstance((p.get("valueQuantity") or {}).get("value"), (int, float))
                                             for p in parts)
                elif kind == "Patient":
                    counts["patient"] += 1
    return counts


@pytest.fixture(scope="module")
def synthea_home(tmp_path_factory):
    """The 100-patient Synthea bundles ingested and validated once for this module."""
    home, archive, summary = ingest_export(BUNDLES_100P, tmp_path_factory.mktemp("synthea"))
    return home, summary, count_bundles(archive)


def test_synthea_bundles_reach_the_validated_store(synthea_home):
    home, summary, counts = synthea_home
    assert summary["files_quarantined"] == 0 and summary["validation"]["success"], summary["validation"]
    assert summary["patients"] == counts["patient"] == 100
    conditions, medications = validated(home, "conditions"), validated(home, "medication_exposures")
    observations = validated(home, "observations")
    assert len(conditions) >= 0.99 * counts["condition"]
    assert len(medications) >= 0.99 * counts["medication"]
    assert observations["value"].notna().sum() >= 0.98 * counts["numeric"]
    assert set(conditions["system"]) == {"http://snomed.info/sct"}
    assert set(medications["drug_system"]) == {"http://www.nlm.nih.gov/research/umls/rxnorm"}
    # every resource accounted for: the types medmeta reads are read, the rest ignored by type
    read, ignored = summary["resources_read"], summary["resources_ignored"]
    assert {"Patient", "Condition", "Observation", "MedicationRequest"} <= set(read)
    assert not set(read) & set(ignored) and "Condition" not in ignored and "MedicationRequest" not in ignored


def test_synthea_disease_task_set_over_snomed_ct(synthea_home, tmp_path):
    home, _, _ = synthea_home
    result = medmeta("tasks", "build", "--by", "disease", "--inputs", "records", "--name", "synthea-disease",
                     "--json", home=home, env_key="realdata-test-key-0123456789")
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads((home / "tasksets" / "synthea-disease" / "manifest.json").read_text())
    assert manifest["classes"]["system"]["uri"] == "http://snomed.info/sct"
    classes = [c for split in ("train", "val", "test") for c in manifest["splits"][split]["classes"]]
    assert len(classes) >= 14 and all(c["cases"] >= 8 for c in classes)


def test_synthea_drug_outcomes_are_reported_per_drug(synthea_home):
    home, _, _ = synthea_home
    result = medmeta("tasks", "build", "--by", "drug", "--name", "synthea-drug", "--json", home=home,
                     env_key="realdata-test-key-0123456789")
    report = json.loads(result.stdout)
    outcomes = report["outcomes"]
    ruled = {code: o for code, o in outcomes.items() if o["responders"] + o["non_responders"] > 0}
    assert ruled, "the default rules label some exposures (statins, antihypertensives)"
    assert all("usable" in o for o in outcomes.values())
    if result.returncode == 2:  # not enough of both outcomes: one line saying why, and the report
        assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1


def count_ndjson(archive: Path) -> Counter:
    counts: Counter = Counter()
    with zipfile.ZipFile(archive) as z:
        for name in z.namelist():
            if name.endswith(".ndjson") and not name.endswith("log.ndjson"):
                for line in z.read(name).decode().splitlines():
                    if line.strip():
                        counts[json.loads(line)["resourceType"]] += 1
    return counts


def test_bulk_ndjson_export_is_accounted_for_and_validates(tmp_path):
    home, archive, summary = ingest_export(BULK_10P, tmp_path)
    counts = count_ndjson(archive)
    assert summary["files_quarantined"] == 0 and summary["files_seen"] == summary["files_ingested"]
    assert summary["validation"]["success"], summary["validation"]
    seen = Counter(summary["resources_read"]) + Counter(summary["resources_ignored"])
    for kind, n in counts.items():  # every resource of every file: read or ignored by type
        assert seen[kind] == n, kind
    assert len(validated(home, "conditions")) >= 0.99 * counts["Condition"]
    assert len(validated(home, "medication_exposures")) >= 0.99 * counts["MedicationRequest"]


def test_omop_export_is_accounted_for_validates_and_gives_a_snomed_ct_task_set(tmp_path):
    home, archive, summary = ingest_export(OMOP_27P, tmp_path)
    assert [q["reason"].split(":")[0] for q in summary["quarantined"]] == ["macos_metadata"]
    assert summary["validation"]["success"], summary["validation"]
    with zipfile.ZipFile(archive) as z:
        rows = {Path(n).stem.lower(): list(csv.DictReader(io.TextIOWrapper(z.open(n), "utf-8")))
                for n in z.namelist() if n.endswith(".csv") and "__MACOSX" not in n}
    assert summary["patients"] == len(rows["person"])
    conditions = validated(home, "conditions")
    assert len(conditions) == len({r["condition_occurrence_id"] for r in rows["condition_occurrence"]})
    assert set(conditions["system"]) == {"http://snomed.info/sct"}
    result = medmeta("tasks", "build", "--by", "disease", "--inputs", "records", "--name", "omop", home=home,
                     env_key="realdata-test-key-0123456789")
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads((home / "tasksets" / "omop" / "manifest.json").read_text())
    assert manifest["classes"]["system"]["uri"] == "http://snomed.info/sct"
    classes = [c for split in ("train", "val", "test") for c in manifest["splits"][split]["classes"]]
    assert len(classes) >= 3 and all(c["cases"] >= 8 for c in classes)


def test_medmeta_run_on_synthea_publishes_a_records_model(synthea_home, tmp_path):
    """The whole pipeline on real records: a SNOMED CT task set, a trained ProtoNet, its evaluation against
    both baselines, a published version (short settings: this checks the path, bench/real_records.py the quality)."""
    home, _, _ = synthea_home
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        "tasksets:\n  - {by: disease, inputs: records, ways: 3, shots: 5, queries: 3, seed: 0, name: synthea-run}\n"
        "train: {algorithms: [protonet], steps: 30, val_every: 15, val_episodes: 10, checkpoint_every: 15}\n"
        "evaluate: {episodes: 30, shots: [5], baseline_steps: 20, pretrain_steps: 20}\n"
        "publish: {adapt: false}\n")
    result = medmeta("run", str(home.parent / "landing"), "--config", str(config), "--json", home=home,
                     env_key="realdata-test-key-0123456789")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["status"] == "completed" and summary["ingest"]["files_unchanged"] == 103
    (model,) = summary["models"]
    assert model["algorithm"] == "protonet" and model["published"]
    scores = model["evaluation"][0]
    assert {"meta", "from_scratch", "pretrain_finetune"} <= set(scores), scores  # both baselines, same episodes
    assert all(0.0 <= scores[m]["accuracy"] <= 1.0 and scores[m]["ci95"] > 0 for m in ("meta", "from_scratch"))
    listed = medmeta("models", "list", "--json", home=home, env_key="realdata-test-key-0123456789")
    assert listed.returncode == 0 and "synthea-run" in listed.stdout
