"""Every real DICOM file that pydicom and pydicom-data ship goes through the ingest flow:
each one ingested or quarantined with a reason, none lost, none crashing the batch."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from medmeta.home import Home
from medmeta.ingest.images_table import read_images
from medmeta.errors import (
    CORRUPT_DICOM, EMPTY_FILE, IMAGE_TOO_LARGE, INVALID_RECORD, MALFORMED_JSON, NO_PIXEL_DATA, NOT_DICOM, NOT_FHIR,
    TRUNCATED_DICOM, UNDECODABLE_PIXELS, UNKNOWN_SITE_LAYOUT, UNSUPPORTED_FILE_TYPE,
)
from tests.conftest import pydicom_test_files

EXPECTED_CODES = {CORRUPT_DICOM, EMPTY_FILE, IMAGE_TOO_LARGE, INVALID_RECORD, MALFORMED_JSON, NO_PIXEL_DATA, NOT_DICOM, NOT_FHIR,
                  TRUNCATED_DICOM, UNDECODABLE_PIXELS, UNSUPPORTED_FILE_TYPE,
                  UNKNOWN_SITE_LAYOUT}  # rtstruct.dump: a text dump that reads as a CSV no site mapping knows


@pytest.mark.usefixtures("prefect_api", "pseudonym_key")
def test_every_real_test_file_is_ingested_or_quarantined_with_a_reason(tmp_path):
    from flows.ingest import ingest_flow

    landing = tmp_path / "landing"
    landing.mkdir()
    files = pydicom_test_files()
    for i, path in enumerate(files):
        shutil.copyfile(path, landing / f"{i:04d}_{path.name}")
    summary = ingest_flow(str(landing), str(tmp_path / "home"))

    assert summary["files_seen"] == len(files)
    assert summary["files_seen"] == summary["files_ingested"] + summary["files_unchanged"] + summary["files_quarantined"]
    codes = {q["reason"].split(":", 1)[0] for q in summary["quarantined"]}
    assert codes <= EXPECTED_CODES, codes - EXPECTED_CODES
    home = tmp_path / "home"
    images = read_images(Home(home)).to_pandas()
    assert summary["images"] == len(images) == images["image_id"].nunique()
    # One SOP instance shipped in several transfer syntaxes is one image in the store; every
    # file's own contribution is in its part.
    per_file = pd.concat([pd.read_parquet(p) for p in (home / "store" / "parts" / "images-64").glob("*.parquet")])
    assert len(per_file) >= 140
    syntaxes = set(per_file["transfer_syntax"])
    for uid in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
                "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80",
                "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"):
        assert uid in syntaxes, f"no ingested image in transfer syntax {uid}"
    for shard, index in zip(per_file["shard"], per_file["shard_index"]):
        pixels = np.load(home / "cache" / "pixels" / "shards" / shard, mmap_mode="r")[index]
        assert pixels.shape == (64, 64) and np.isfinite(pixels).all()
    stack = np.stack([np.load(home / path, mmap_mode="r")[index]
                      for path, index in zip(images["pixel_path"], images["pixel_index"])])
    assert stack.shape == (len(images), 64, 64) and np.isfinite(stack).all()
