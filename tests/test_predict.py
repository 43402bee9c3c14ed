"""``medmeta predict`` on models the real pipeline published: DICOM written by the synth and records
CSVs, adapted models without a support set, and every bad input refused (exit 2) with the registry
left exactly as it was."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from typer.testing import CliRunner

from medmeta.cli import app
from medmeta.home import Home
from medmeta.predict.records import record_features
from medmeta.tasksets.features import raw_features
from medmeta.tasksets.store import load_taskset
from medmeta.training.publish import registry_name
from tests.pipeline_home import IMAGES, RECORDS, build_home
from tests.records_model import write_csv
from validation.gate import current_snapshot

pytestmark = pytest.mark.usefixtures("prefect_api", "one_torch_thread")
IMAGES_SET, RECORDS_SET = "disease-images-2w2s2q-seed0", "disease-records-2w2s2q-seed0"
IMAGE_MODEL, RECORD_MODEL = registry_name(IMAGES_SET), registry_name(RECORDS_SET)


@pytest.fixture(scope="module")
def built(tmp_path_factory, prefect_api):
    return build_home(tmp_path_factory.mktemp("predict"), [IMAGES, RECORDS], ["protonet"])


def predict(built, *args: str):
    result = CliRunner().invoke(app, ["predict", "--home", str(built["home"]), *args])
    return result


def ok(built, *args: str) -> dict:
    result = predict(built, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def refused(built, *args: str) -> str:
    result = predict(built, *args)
    assert result.exit_code == 2, result.output
    return result.output


def dicom_by_disease(built) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for path in sorted((built["landing"] / "imaging").rglob("*.dcm")):
        mrn = str(pydicom.dcmread(path, stop_before_pixels=True).PatientID)
        out.setdefault(built["labels"][mrn]["disease"], []).append(path)
    return out


@pytest.fixture(scope="module")
def image_cases(built, tmp_path_factory):
    """support.csv (2 diseases x 2 files), query.csv (1 more of each) and a query folder."""
    folder = tmp_path_factory.mktemp("image-cases")
    by = dicom_by_disease(built)
    codes = sorted(c for c, files in by.items() if len(files) >= 3)[:2]
    support = write_csv(folder / "support.csv", ["file", "label"],
                        [[str(f), c] for c in codes for f in by[c][:2]])
    query = write_csv(folder / "query.csv", ["id", "file", "label"],
                      [[f"{c}-case", str(by[c][2]), c] for c in codes])
    query_dir = folder / "query-dicom"
    query_dir.mkdir()
    for c in codes:
        shutil.copy(by[c][2], query_dir / f"{c}.dcm")
    return {"folder": folder, "codes": codes, "support": support, "query": query, "query_dir": query_dir, "by": by}


def registry_fingerprint(home: Path) -> dict:
    root = home / "registry"
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_images_meta_model_adapts_on_dicom_support_and_predicts_each_query_case(built, image_cases):
    out = ok(built, "--model", IMAGE_MODEL, "--support", str(image_cases["support"]),
             "--query", str(image_cases["query"]))
    codes = image_cases["codes"]
    assert out["classes"] == codes and out["adapted_on"] == "support" and out["support"] == {c: 2 for c in codes}
    assert sorted(out["predictions"]) == sorted(f"{c}-case" for c in codes)
    for probs in out["predictions"].values():
        assert sorted(probs) == codes and sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
    # a folder of DICOM files as the query: one case per file, the same probabilities
    folder = ok(built, "--model", IMAGE_MODEL, "--support", str(image_cases["support"]),
                "--query", str(image_cases["query_dir"]))
    assert folder["predictions"] == {f"{c}.dcm": out["predictions"][f"{c}-case"] for c in codes}
    # and a DICOM folder with labels.csv as the support
    support_dir = image_cases["folder"] / "support-dicom"
    support_dir.mkdir(exist_ok=True)
    rows = []
    for c in codes:
        for i, f in enumerate(image_cases["by"][c][:2]):
            shutil.copy(f, support_dir / f"{c}-{i}.dcm")
            rows.append([f"{c}-{i}.dcm", c])
    write_csv(support_dir / "labels.csv", ["file", "label"], rows)
    again = ok(built, "--model", IMAGE_MODEL, "--support", str(support_dir), "--query", str(image_cases["query"]))
    assert again["predictions"] == out["predictions"]


def test_an_adapted_model_predicts_without_a_support_set(built, image_cases):
    home = Home(built["home"])
    adapted = [a for a in built["summary"]["adapted"] if a["taskset"] == IMAGES_SET and "ref" in a]
    assert adapted
    from medmeta import registry

    card = registry.resolve(home, adapted[0]["ref"]).card
    out = ok(built, "--model", adapted[0]["name"], "--query", str(image_cases["query_dir"]))
    assert out["adapted_on"] == "stored state" and out["classes"] == card["adaptation"]["label_order"]
    assert out["model"] == adapted[0]["ref"] and len(out["predictions"]) == len(image_cases["codes"])
    # with a support set, its parent adapts on it instead
    parent = f"{card['parent']['name']}@{card['parent']['version']}"
    resupported = ok(built, "--model", adapted[0]["name"], "--support", str(image_cases["support"]),
                     "--query", str(image_cases["query"]))
    assert resupported["weights_from"] == parent and resupported["adapted_on"] == "support"


def _record_rows(built, split: str, count_per_class: int):
    """Raw record values (as a user would type them) of a split's first cases per class, with their
    standardised vectors from the task set."""
    home = Home(built["home"])
    tasks = load_taskset(home, RECORDS_SET)
    part = tasks.splits[split]
    picks = [i for c in range(2) for i in (part.labels == c).nonzero().flatten().tolist()[:count_per_class]]
    tables_dir = home.root / "validation" / current_snapshot(home) / "tables"
    tables = {t: pd.read_parquet(tables_dir / f"{t}.parquet") for t in ("patients", "observations")}
    cases = pd.DataFrame({"patient_id": [part.patient_ids[i] for i in picks]})
    raw = raw_features(cases, tables, with_conditions=False)
    header = ["id", "label", "age_years", "sex"] + [c for c in raw.columns if c.startswith("lab:")]
    rows = []
    for n, (i, (_, r)) in enumerate(zip(picks, raw.iterrows())):
        sex = "female" if r["sex_female"] else ("male" if r["sex_male"] else "unknown")
        labs = ["" if np.isnan(r[c]) else repr(float(r[c])) for c in header[4:]]
        rows.append([f"{split}-{n}", part.codes[int(part.labels[i])], repr(float(r["age_years"])), sex, *labs])
    return header, rows, part.inputs[picks], tasks.manifest["features"]["record"]


def test_records_are_standardised_exactly_as_the_task_set_did(built):
    header, rows, expected, spec = _record_rows(built, "test", 2)
    columns = {h: [r[j] for r in rows] for j, h in enumerate(header) if h not in ("id", "label")}
    got = record_features(columns, [r[0] for r in rows], spec, "test")
    assert torch.equal(torch.from_numpy(got), expected)


def test_records_model_adapts_on_a_csv_support_set(built, tmp_path):
    header, rows, _, _ = _record_rows(built, "test", 3)
    support = write_csv(tmp_path / "support.csv", header, [r for k, r in enumerate(rows) if k % 3 != 2])
    query = write_csv(tmp_path / "query.csv", header, [r[:1] + [""] + r[2:] for k, r in enumerate(rows) if k % 3 == 2])
    out = ok(built, "--model", RECORD_MODEL, "--support", str(support), "--query", str(query))
    assert len(out["classes"]) == 2 and len(out["predictions"]) == 2
    assert all(sum(p.values()) == pytest.approx(1.0, abs=1e-5) for p in out["predictions"].values())


def write_dicom(path: Path, size: int, modality: str) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = modality, "X1"
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (np.arange(size * size, dtype=np.uint16) % 4000).tobytes()
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def test_every_bad_input_is_refused_by_name_and_changes_nothing(built, image_cases, tmp_path):
    home = built["home"]
    before = registry_fingerprint(home)
    support, query = str(image_cases["support"]), str(image_cases["query"])
    codes = image_cases["codes"]

    assert "no model named nope" in refused(built, "--model", "nope", "--support", support, "--query", query)
    message = refused(built, "--model", f"{IMAGE_MODEL}@9", "--support", support, "--query", query)
    assert "has no version 9" in message and "versions: 1" in message
    assert "is a meta-model: give --support" in refused(built, "--model", IMAGE_MODEL, "--query", query)

    one_class = write_csv(tmp_path / "one.csv", ["file", "label"],
                          [[str(f), codes[0]] for f in image_cases["by"][codes[0]][:2]])
    assert "needs labelled cases of exactly 2 classes" in refused(
        built, "--model", IMAGE_MODEL, "--support", str(one_class), "--query", query)
    unlabeled = write_csv(tmp_path / "unlabeled.csv", ["file", "label"],
                          [[str(image_cases["by"][c][0]), c] for c in codes]
                          + [[str(image_cases["by"][codes[0]][1]), ""]])
    assert "unlabeled cases" in refused(built, "--model", IMAGE_MODEL, "--support", str(unlabeled), "--query", query)
    no_label = write_csv(tmp_path / "nolabel.csv", ["file"], [[str(image_cases["by"][c][0])] for c in codes])
    assert "no label column" in refused(built, "--model", IMAGE_MODEL, "--support", str(no_label), "--query", query)

    # the wrong modality of input: images for a records model, records for an images model
    assert "the model takes records only" in refused(built, "--model", RECORD_MODEL, "--support", support,
                                                      "--query", query)
    records = write_csv(tmp_path / "records.csv", ["age_years", "sex"], [["50", "female"]])
    assert "holds no images" in refused(built, "--model", IMAGE_MODEL, "--support", support, "--query", str(records))
    typo = write_csv(tmp_path / "typo.csv", ["age_years", "sex", "lab:0000-0"], [["50", "female", "1"]])
    assert "columns the model does not know: lab:0000-0" in refused(
        built, "--model", RECORD_MODEL, "--support", str(typo), "--query", str(typo))

    # a DICOM modality the model never saw, and an image smaller than the validation rules allow
    ultrasound = tmp_path / "us"
    ultrasound.mkdir()
    write_dicom(ultrasound / "a.dcm", 64, "US")
    message = refused(built, "--model", IMAGE_MODEL, "--support", support, "--query", str(ultrasound))
    assert "modality US" in message and "a.dcm" in message and "CT" in message
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    write_dicom(tiny / "b.dcm", 8, "CT")
    message = refused(built, "--model", IMAGE_MODEL, "--support", support, "--query", str(tiny))
    assert "8 x 8 pixels" in message and "16 pixels a side" in message
    not_dicom = tmp_path / "text"
    not_dicom.mkdir()
    (not_dicom / "c.dcm").write_text("hello")
    assert "not_dicom" in refused(built, "--model", IMAGE_MODEL, "--support", support, "--query", str(not_dicom))
    assert registry_fingerprint(home) == before


def test_tampered_weights_are_refused(built, image_cases, tmp_path):
    copy = tmp_path / "home"
    shutil.copytree(built["home"] / "registry", copy / "registry")
    from medmeta import registry

    weights = registry.resolve(copy, IMAGE_MODEL).weights_path
    weights.chmod(0o644)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    result = CliRunner().invoke(app, ["predict", "--home", str(copy), "--model", IMAGE_MODEL,
                                      "--support", str(image_cases["support"]), "--query", str(image_cases["query"])])
    assert result.exit_code == 2 and "checksum mismatch" in result.output


def test_drug_models_take_response_and_no_response_in_that_label_order():
    from medmeta.errors import MedmetaError
    from medmeta.predict.cases import Cases
    from medmeta.predict.run import support_labels

    spec = {"kind": "drug", "n_way": 2}
    cases = lambda labels: Cases(Path("s.csv"), [str(i) for i in range(len(labels))], labels, None, {})  # noqa: E731
    assert support_labels(cases(["response", "no_response", "response"]), spec, "s.csv") == (
        ["no_response", "response"], [1, 0, 1])
    with pytest.raises(MedmetaError, match="labels are no_response and response, got yes"):
        support_labels(cases(["yes", "no_response"]), spec, "s.csv")
    with pytest.raises(MedmetaError, match="none of no_response"):
        support_labels(cases(["response", "response"]), spec, "s.csv")
