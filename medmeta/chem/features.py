"""Compound featurisers (issue 15): ECFP4 bits and counts, a fixed list of RDKit 2D descriptors, the
Tanimoto similarity of bit vectors, and a cache that computes each compound's features once.

- ``ecfp4_bits(smiles, n_bits=2048)``: Morgan fingerprint, radius 2 (ECFP4), from RDKit's
  ``rdFingerprintGenerator`` (not the deprecated ``AllChem.GetMorganFingerprintAsBitVect``);
  ``uint8`` 0/1, shape ``(n, n_bits)``.
- ``ecfp4_counts(smiles, n_bits=2048)``: the same environments counted, ``uint8`` saturating at 255.
- ``descriptors(smiles)``: ``DESCRIPTOR_NAMES`` in that order, ``float32`` ``(n, len(DESCRIPTOR_NAMES))``.
  A descriptor RDKit cannot compute for a molecule (NaN, e.g. Gasteiger charges of some metals) or that
  overflows float32 (inf, e.g. a huge ``BertzCT``) is stored as 0.0; ``descriptors_replaced()`` counts
  them per call so a caller can report it.
- ``tanimoto(a_bits, b_bits)``: ``(n, m)`` similarity matrix, numpy or torch in, the same kind out.
- ``FeatureCache(folder).get(featuriser, keys)``: features by compound, computed once; one file per
  featuriser (``<folder>/<featuriser>.npz``: ``keys`` unicode array + ``values``, loaded with
  ``allow_pickle=False``) beside a snapshot or task set; a rerun reads it.

Input SMILES are expected canonical (medmeta's store holds canonical, standardised SMILES); the cache
keys by the string given. A SMILES RDKit cannot parse raises ``Rejected("unparseable_smiles", ...)`` naming
only its index in the call, never the string. RDKit is imported inside the functions (lazy).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from medmeta.errors import UNPARSEABLE_SMILES, Rejected

ECFP4_RADIUS = 2
N_BITS = 2048

# The descriptors, by RDKit name (rdkit.Chem.Descriptors); fixed so a feature vector means the same
# thing whatever RDKit's full list grows to.
DESCRIPTOR_NAMES: tuple[str, ...] = (
    "MolWt", "HeavyAtomMolWt", "ExactMolWt", "NumValenceElectrons", "MolLogP", "MolMR", "TPSA", "LabuteASA",
    "qed", "FractionCSP3", "HeavyAtomCount", "NHOHCount", "NOCount", "NumHDonors", "NumHAcceptors",
    "NumHeteroatoms", "NumRotatableBonds", "RingCount", "NumAromaticRings", "NumAliphaticRings",
    "NumSaturatedRings", "NumAromaticCarbocycles", "NumAromaticHeterocycles", "NumAliphaticCarbocycles",
    "NumAliphaticHeterocycles", "NumSaturatedCarbocycles", "NumSaturatedHeterocycles",
    "MaxPartialCharge", "MinPartialCharge", "MaxAbsPartialCharge", "MinAbsPartialCharge",
    "MaxEStateIndex", "MinEStateIndex", "BalabanJ", "BertzCT", "HallKierAlpha", "Kappa1", "Kappa2", "Kappa3",
    "Chi0", "Chi0n", "Chi0v", "Chi1", "Chi1n", "Chi1v", "Chi2n", "Chi2v", "Chi3n", "Chi3v", "Chi4n", "Chi4v",
    "fr_halogen", "fr_amide", "fr_ester", "fr_ether", "fr_NH2", "fr_COO", "fr_benzene", "fr_bicyclic",
)

_replaced = 0


def _mols(smiles: Sequence[str], positions: Sequence[int] | None = None) -> list:
    """RDKit molecules, or ``Rejected(UNPARSEABLE_SMILES)`` naming the first unparseable one by its index
    (``positions[i]`` when given: its index in the caller's list)."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")  # RDKit's parse warnings would print the SMILES
    mols = []
    for i, s in enumerate(smiles):
        mol = Chem.MolFromSmiles(s) if isinstance(s, str) and s else None
        if mol is None:
            where = i if positions is None else positions[i]
            raise Rejected(UNPARSEABLE_SMILES, f"the SMILES at index {where} does not parse (RDKit)")
        mols.append(mol)
    return mols


def _morgan(n_bits: int):
    from rdkit.Chem import rdFingerprintGenerator

    return rdFingerprintGenerator.GetMorganGenerator(radius=ECFP4_RADIUS, fpSize=n_bits)


def ecfp4_bits(smiles: Sequence[str], n_bits: int = N_BITS, positions: Sequence[int] | None = None) -> np.ndarray:
    """ECFP4 bit vectors, ``uint8`` 0/1 of shape ``(len(smiles), n_bits)``."""
    gen = _morgan(n_bits)
    out = np.zeros((len(smiles), n_bits), dtype=np.uint8)
    for i, mol in enumerate(_mols(smiles, positions)):
        out[i] = gen.GetFingerprintAsNumPy(mol)
    return out


def ecfp4_counts(smiles: Sequence[str], n_bits: int = N_BITS, positions: Sequence[int] | None = None) -> np.ndarray:
    """ECFP4 count vectors (how often each hashed environment occurs), ``uint8`` saturating at 255."""
    gen = _morgan(n_bits)
    out = np.zeros((len(smiles), n_bits), dtype=np.uint8)
    for i, mol in enumerate(_mols(smiles, positions)):
        out[i] = np.minimum(gen.GetCountFingerprintAsNumPy(mol), 255)
    return out


def descriptors(smiles: Sequence[str], positions: Sequence[int] | None = None) -> np.ndarray:
    """``DESCRIPTOR_NAMES`` per compound, ``float32`` ``(n, len(DESCRIPTOR_NAMES))``; NaN and values
    beyond float32 (inf) become 0.0, counted in ``descriptors_replaced()``."""
    global _replaced
    from rdkit.Chem import Descriptors

    functions = [getattr(Descriptors, name) for name in DESCRIPTOR_NAMES]
    values = np.array([[fn(mol) for fn in functions] for mol in _mols(smiles, positions)], dtype=np.float64)
    values = values.reshape(len(smiles), len(DESCRIPTOR_NAMES))
    with np.errstate(over="ignore"):
        out = values.astype(np.float32)
    bad = ~np.isfinite(out)
    _replaced = int(bad.sum())
    out[bad] = 0.0
    return out


def descriptors_replaced() -> int:
    """How many values the last ``descriptors`` call replaced by 0.0 (NaN or beyond float32)."""
    return _replaced


# name -> fn(smiles, positions=None) -> (n, width) array
FEATURISERS: dict[str, Callable[..., np.ndarray]] = {
    "ecfp4_bits": ecfp4_bits,
    "ecfp4_counts": ecfp4_counts,
    "descriptors": descriptors,
}


def tanimoto(a_bits, b_bits):
    """Tanimoto similarity ``|a & b| / |a | b|`` of every row of ``a_bits`` ``(n, d)`` with every row of
    ``b_bits`` ``(m, d)`` (0/1 vectors): ``(n, m)`` float32; 0 where both vectors are empty. numpy arrays
    in, a numpy array out; torch tensors in, a tensor out (on their device)."""
    if type(a_bits).__module__.startswith("torch"):  # a Tensor; torch is not imported for numpy input
        import torch

        a, b = a_bits.float(), b_bits.to(a_bits.device).float()
        inter = a @ b.T
        union = a.sum(1, keepdim=True) + b.sum(1).unsqueeze(0) - inter
        return torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(inter))
    a, b = np.asarray(a_bits, dtype=np.float32), np.asarray(b_bits, dtype=np.float32)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0).astype(np.float32)


class FeatureCache:
    """Features computed once per compound, kept in ``folder`` (one ``<featuriser>.npz`` each).

    ``get(featuriser, keys)`` returns the rows for ``keys`` (canonical SMILES) in order, computing and
    appending only the keys the file does not hold yet; the file is rewritten atomically (temp file +
    rename). ``computed`` counts the compounds featurised by this object (a rerun on a full cache: 0).
    """

    def __init__(self, folder: Path | str):
        self.folder = Path(folder)
        self.computed: dict[str, int] = {}
        self._loaded: dict[str, tuple[dict[str, int], np.ndarray]] = {}

    def path(self, featuriser: str) -> Path:
        return self.folder / f"{featuriser}.npz"

    def _load(self, featuriser: str) -> tuple[dict[str, int], np.ndarray]:
        if featuriser not in self._loaded:
            path = self.path(featuriser)
            if path.exists():
                with np.load(path, allow_pickle=False) as stored:
                    keys, values = stored["keys"], stored["values"]
                self._loaded[featuriser] = ({str(k): i for i, k in enumerate(keys)}, values)
            else:
                self._loaded[featuriser] = ({}, None)
        return self._loaded[featuriser]

    def get(self, featuriser: str, keys: Sequence[str]) -> np.ndarray:
        if featuriser not in FEATURISERS:
            raise ValueError(f"unknown featuriser {featuriser!r}; known: {', '.join(FEATURISERS)}")
        index, values = self._load(featuriser)
        first = {}
        for i, k in enumerate(keys):
            if k not in index:
                first.setdefault(k, i)
        if first:
            missing = list(first)
            new = FEATURISERS[featuriser](missing, positions=list(first.values()))
            values = new if values is None else np.concatenate([values, new])
            for k in missing:
                index[k] = len(index)
            self._loaded[featuriser] = (index, values)
            self.computed[featuriser] = self.computed.get(featuriser, 0) + len(missing)
            self._write(featuriser, index, values)
        return values[[index[k] for k in keys]]

    def _write(self, featuriser: str, index: dict[str, int], values: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        keys = np.array(sorted(index, key=index.__getitem__), dtype=str)
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{featuriser}.", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, keys=keys, values=values)
            os.replace(tmp, self.path(featuriser))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
