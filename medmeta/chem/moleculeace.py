"""Where the ``moleculeace`` wheel (3.0.0, installed with ``--no-deps``) keeps its 30 real ChEMBL activity
tables (``CHEMBL<target>_<type>.csv``: ``smiles``, ``exp_mean [nM]``, ``y`` = -log10 of it, ``cliff_mol``,
``split``). Test and benchmark data only: the package itself is never imported (it pulls torch_geometric)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from medmeta.errors import MedmetaError


def tables_dir() -> Path:
    """The folder of the 30 tables; a clear error when the wheel is not installed."""
    spec = importlib.util.find_spec("MoleculeACE")
    if spec is None or not spec.submodule_search_locations:
        raise MedmetaError("the moleculeace wheel is not installed: pip install --no-deps moleculeace==3.0.0")
    folder = Path(next(iter(spec.submodule_search_locations))) / "Data" / "benchmark_data"
    if not folder.is_dir():
        raise MedmetaError(f"moleculeace is installed but has no Data/benchmark_data folder ({folder})")
    return folder


def table_names() -> list[str]:
    """The tables' names without .csv, sorted: CHEMBL1862_Ki, ..."""
    return sorted(p.stem for p in tables_dir().glob("CHEMBL*_*.csv"))


def copy_tables(dest: Path, names: list[str] | None = None) -> list[Path]:
    """Copy the named tables (all by default) into ``dest`` (tests and benchmarks work on copies)."""
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for name in names or table_names():
        out.append(Path(shutil.copy2(tables_dir() / f"{name}.csv", dest / f"{name}.csv")))
    return out
