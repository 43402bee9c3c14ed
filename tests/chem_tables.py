"""Real compounds for the chem tests: rows of the MoleculeACE tables that the moleculeace wheel ships,
copied into a temporary folder and read with pandas (the tests' own reading, not medmeta's ingest)."""

from __future__ import annotations

from pathlib import Path

import pytest


def table_rows(dest: Path, name: str, n: int) -> list[str]:
    """The first ``n`` SMILES of MoleculeACE table ``name`` (copied into ``dest`` first); skips the
    test when RDKit or the moleculeace wheel is not installed."""
    pytest.importorskip("rdkit")
    import pandas as pd

    from medmeta.chem.moleculeace import copy_tables
    from medmeta.errors import MedmetaError

    try:
        (path,) = copy_tables(dest, [name])
    except MedmetaError as e:
        pytest.skip(f"the MoleculeACE tables are not available: {e}")
    return list(pd.read_csv(path, nrows=n)["smiles"])
