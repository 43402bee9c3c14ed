"""The third-party exports in ../shared/realdata, copied into a test's temporary folder.

They are never committed into the project; a test that needs them skips, saying where it looked,
when the folder is absent. ``MEDMETA_REALDATA`` points elsewhere.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

import pytest

REALDATA = Path(os.environ.get("MEDMETA_REALDATA") or Path(__file__).resolve().parents[1].parent / "shared" / "realdata")
BUNDLES_100P = "synthea_r4_transaction_bundles_100p.zip"
BULK_10P = "synthea_bulk_ndjson_10p.zip"
OMOP_27P = "omop_cdm54_synthea27nj.zip"
EPIC_LIKE = "epic_like"

needs_realdata = pytest.mark.skipif(not REALDATA.is_dir(), reason=f"no real exports at {REALDATA} (set MEDMETA_REALDATA)")


def copy_export(name: str, folder: Path) -> Path:
    """``name`` (a zip, unpacked, or a folder) copied under ``folder``; returns the copy's folder."""
    source = REALDATA / name
    target = folder / Path(name).stem
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        with zipfile.ZipFile(source) as archive:
            archive.extractall(target)
    return target
