"""Task sets from a real ingested, validated cohort: disjoint splits, bytes, exclusions, the gate, flow, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medmeta.errors import MedmetaError
from medmeta.home import Home
from medmeta.tasksets.build import build_taskset
from medmeta.tasksets.spec import make_spec
from medmeta.tasksets.store import load_taskset, taskset_dir
from metalearn.sampler import EpisodeSampler
from tests.conftest import copy_home
from tests.test_cli import run_cli
from validation.gate import current_snapshot, record_result

pytestmark = pytest.mark.usefixtures("prefect_api")
SMALL = dict(ways=2, shots=2, queries=2)  # 4 cases per class: most diseases of a small cohort qualify


@pytest.fixture(scope="module")
def home(cohort150, tmp_path_factory) -> Home:
    home = Home(copy_home(cohort150, tmp_path_factory.mktemp("tasksets") / "home"))
    _as_schema_v2(home)
    return home


def _as_schema_v2(home: Home) -> None:
    """The synthetic cohort's validated tables with their code systems (ICD-10-CM, LOINC, ATC) filled in
    where the ingest on this branch leaves them empty; a no-op once ingest writes schema v2 itself."""
    from medmeta.schema import TABLES
    from medmeta.terminology.systems import ATC, ICD10CM, LOINC

    fill = {"conditions": {"system": ICD10CM}, "observations": {"system": LOINC, "censored": False},
            "medication_exposures": {"drug_system": ATC}}
    folder = home.root / "validation" / current_snapshot(home) / "tables"
    for table, values in fill.items():
        frame = pd.read_parquet(folder / f"{table}.parquet")
        for column in TABLES[table].names:
            if column not in frame:
                frame[column] = values.get(column)
            elif column in values:
                frame[column] = frame[column].fillna(values[column])
        frame[TABLES[table].names].to_parquet(folder / f"{table}.parquet", index=False)


def _validated(home: Home, table: str) -> pd.DataFrame:
    return pd.read_parquet(home.root / "validation" / current_snapshot(home) / "tables" / f"{table}.parquet")


def _codes(manifest: dict, split: str) -> set[str]:
    return {c["code"] for c in manifest["splits"][split]["classes"]}


@pytest.mark.parametrize("kind,inputs", [("disease", "records"), ("disease", "images"), ("drug", "records")])
def test_splits_never_share_a_class_or_a_disease_patient(home, kind, inputs):
    for seed in range(4):
        m = build_taskset(home, make_spec(kind, inputs, seed=seed, name=f"leak-{kind}-{inputs}-{seed}",
                                          **({} if kind == "drug" else SMALL)))
        train, val, test = (_codes(m, s) for s in ("train", "val", "test"))
        assert train and val and test
        assert not (train & val or train & test or val & test), f"seed {seed}: a class in two splits"
        adaptation = _codes(m, "adaptation") if "adaptation" in m["splits"] else set()
        assert not adaptation & (train | val | test)
        ts = load_taskset(home, m["name"])
        if kind == "disease":  # one case per patient: no patient in two splits either
            seen = [set(ts.splits[s].patient_ids) for s in ts.splits]
            assert sum(map(len, seen)) == len(set().union(*seen))
        for split in ts.splits.values():
            assert len(split) == len(split.patient_ids) == sum(c["cases"] for c in m["splits"][split.name]["classes"])


def test_same_arguments_same_bytes_and_a_new_seed_a_new_split(home):
    spec = make_spec("disease", "both", seed=1, name="same", **SMALL)
    build_taskset(home, spec)
    folder = taskset_dir(home, "same")
    first = {p.name: p.read_bytes() for p in sorted(folder.iterdir())}
    build_taskset(home, spec)
    assert {p.name: p.read_bytes() for p in sorted(folder.iterdir())} == first
    assert set(first) == {"manifest.json", "train.safetensors", "val.safetensors", "test.safetensors",
                          "adaptation.safetensors"}
    tampered = bytearray(first["val.safetensors"])
    tampered[-1] ^= 1
    (folder / "val.safetensors").write_bytes(bytes(tampered))
    with pytest.raises(MedmetaError, match="val.safetensors: missing or not the file the manifest lists"):
        load_taskset(home, "same")
    splits = set()
    for seed in range(5):
        m = build_taskset(home, make_spec("disease", "records", seed=seed, name="by-seed", **SMALL))
        splits.add(tuple(tuple(sorted(_codes(m, s))) for s in ("train", "val", "test")))
    assert len(splits) > 1, "the seed changes the split"


def test_rare_classes_are_listed_with_their_reason_and_kept_for_adaptation(home):
    m = build_taskset(home, make_spec("disease", "records", ways=2, shots=5, queries=5, name="rare"))
    excluded = {e["code"]: e for e in m["excluded"]}
    rare = {c for c, e in excluded.items() if e["reason"].startswith("too_few_cases")}
    assert rare and all(excluded[c]["cases"] < 10 and excluded[c]["adaptation_only"] for c in rare)
    assert "an episode needs 10 (shots 5 + queries 5)" in excluded[sorted(rare)[0]]["reason"]
    assert _codes(m, "adaptation") == rare
    kept = [c for s in ("train", "val", "test") for c in m["splits"][s]["classes"]]
    assert all(c["cases"] >= 10 for c in kept)
    # hypertension sits beside a primary disease: never a patient's rarest condition, so never a label
    assert excluded["I10"]["reason"].startswith("never_the_label") and not excluded["I10"]["adaptation_only"]
    adaptation = load_taskset(home, "rare").splits["adaptation"]
    assert len(adaptation) == sum(excluded[c]["cases"] for c in rare)


def test_records_are_standardised_with_meta_train_statistics_only(home):
    m = build_taskset(home, make_spec("disease", "records", name="features", **SMALL))
    ts = load_taskset(home, "features")
    spec = m["features"]["record"]
    names = spec["names"]
    assert names[:3] == ["age_years", "sex_female", "sex_male"] and not any(n.startswith("condition:") for n in names)
    glucose = names.index("lab:14749-6")
    missing = names.index("missing:14749-6")
    train = ts.splits["train"].inputs
    measured = train[:, missing] == 0
    assert abs(float(train[measured, glucose].mean())) < 1e-4 and abs(float(train[measured, glucose].std(unbiased=False)) - 1) < 1e-3
    assert (train[~measured, glucose] == 0).all()
    # the raw means behind the statistics: meta-train patients only
    obs = _validated(home, "observations")
    means = obs[obs["code"] == "14749-6"].groupby("patient_id")["value"].mean()
    train_ids = ts.splits["train"].patient_ids
    assert spec["mean"][glucose] == pytest.approx(means.reindex(train_ids).dropna().mean())
    assert spec["mean"][glucose] != pytest.approx(means.mean())
    val = ts.splits["val"].inputs
    assert abs(float(val[val[:, missing] == 0, glucose].mean())) > 1e-4, "val is not standardised on itself"


def test_images_are_the_patients_first_cached_image(home):
    build_taskset(home, make_spec("disease", "both", name="pixels", **SMALL))
    split = load_taskset(home, "pixels").splits["train"]
    images = _validated(home, "images").sort_values(["patient_id", "study_date", "image_id"])
    first = images.drop_duplicates("patient_id").set_index("patient_id")
    row = first.loc[split.patient_ids[3]]
    cached = np.load(home.root / row["pixel_path"])[row["pixel_index"]]
    assert set(split.inputs) == {"image", "record"} and split.inputs["image"].shape[1:] == (1, 64, 64)
    assert torch.equal(split.inputs["image"][3, 0], torch.from_numpy(cached.astype(np.float32)))
    conditions = _validated(home, "conditions")
    assert split.codes[int(split.labels[3])] in set(conditions[conditions["patient_id"] == split.patient_ids[3]]["code"])


def test_drug_tasks_are_binary_per_drug_and_sample_one_drug_per_episode(home):
    m = build_taskset(home, make_spec("drug", name="drugs", shots=3, queries=2))
    split = load_taskset(home, "drugs").splits["train"]
    assert split.tasks is not None and set(split.labels.tolist()) == {0, 1}
    assert any(n.startswith("condition:") for n in m["features"]["record"]["names"])
    exposures = _validated(home, "medication_exposures")
    i = 5
    outcome = exposures[(exposures["patient_id"] == split.patient_ids[i])
                        & (exposures["drug_code"] == split.codes[int(split.tasks[i])])]["outcome"].iloc[0]
    assert int(split.labels[i]) == (outcome == "response")
    sampler = EpisodeSampler(**split.sampler_kwargs(), ways=2, shots=3, queries=2, tasks=6, seed=0)
    idx, batch = sampler.indices(0), sampler.sample(0).check()
    for t in range(6):
        assert len(set(split.tasks[idx.support[t]].tolist() + split.tasks[idx.query[t]].tolist())) == 1
        assert torch.equal(split.labels[idx.support[t]], batch.support_y[t]), "1 = response in every episode"


def test_a_failed_snapshot_is_refused_and_nothing_is_written(home, tmp_path):
    work = Home(tmp_path / "home")
    shutil.copytree(home.root, work.root, ignore=shutil.ignore_patterns("tasksets", "prefect"))
    snapshot = current_snapshot(work)
    result = json.loads((work.root / "validation" / snapshot / "result.json").read_text())
    record_result(work, {**result, "success": False,
                         "critical_failures": [{"table": "patients", "rule": "patient_id_unique"}]})
    with pytest.raises(MedmetaError, match="failed validation"):
        build_taskset(work, make_spec("disease", "records", **SMALL))
    cli = run_cli("tasks", "build", "--by", "disease", "--home", str(work.root), "--json")
    assert cli.returncode == 2 and "failed validation" in cli.stderr and "patients.patient_id_unique" in cli.stderr
    assert cli.stdout == "" and not (work.root / "tasksets").exists()


def test_the_flow_reports_an_artifact(home):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.tasksets import build_tasksets_flow

    summary = build_tasksets_flow("disease", "images", seed=2, name="flowed", home=str(home.root), **SMALL)
    assert summary["name"] == "flowed" and summary["snapshot"] == current_snapshot(home)
    assert Path(summary["path"], "manifest.json").is_file()
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["medmeta-taskset"])))
    text = max(artifacts, key=lambda a: a.created).data  # the latest (read_artifacts has no default order)
    assert "# Task set `flowed`" in text and "## Excluded" in text and "too_few_cases" in text
    assert all(f"| {split} |" in text for split in ("train", "val", "test"))


def test_cli_build_and_list_print_one_json_object(home):
    from prefect.settings import PREFECT_API_URL

    env = {"PREFECT_API_URL": PREFECT_API_URL.value()}
    result = run_cli("tasks", "build", "--by", "drug", "--shots", "3", "--queries", "2", "--seed", "1",
                     "--name", "cli-drugs", "--home", str(home.root), "--json", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    assert summary["name"] == "cli-drugs" and summary["kind"] == "drug" and summary["ways"] == 2
    assert set(summary["splits"]) >= {"train", "val", "test"} and summary["features"]["record"] > 0
    for entry in summary["splits"].values():
        assert sum(entry["cases_per_class"].values()) == entry["cases"] and entry["classes"]
    listed = json.loads(run_cli("tasks", "list", "--home", str(home.root), "--json").stdout)
    assert "cli-drugs" in {t["name"] for t in listed["tasksets"]}
    bad = run_cli("tasks", "build", "--by", "drug", "--inputs", "images", "--home", str(home.root))
    assert bad.returncode == 2 and "--inputs must be records" in bad.stderr
