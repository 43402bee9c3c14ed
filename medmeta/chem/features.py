"""Compound featurisers (issue 15): ECFP4 bits and counts, a fixed list of RDKit 2D descriptors, the
Tanimoto similarity of bit vectors, and a cache that computes each compound's features once.

- ``ecfp4_bits(smiles, n_bits=2048)``: Morgan fingerprint, radius 2 (ECFP4), from RDKit's
  ``rdFingerprintGenerator`` (not the deprecated ``AllChem.GetMorganFingerprintAsBitVect``);
  ``uint8`` 0/1, shape ``(n, n_bits)``.
- ``ecfp4_counts(smiles, n_bits=2048)``: the same environments counted, ``uint8`` saturating at 255.
- ``atom_pair_bits``, ``torsion_bits``, ``fcfp4_bits`` (2048 bits each, RDKit ``rdFingerprintGenerator``'s
  atom-pair, topological-torsion and feature-invariant Morgan radius 2 generators with their defaults, as
  bench/molecules_learner.py measured them) and ``maccs_keys`` (the 167 MACCS keys, bit 0 always 0), ``uint8`` 0/1.
- ``fingerprints(smiles)``: ECFP4 | atom pairs | torsions | FCFP4 | MACCS side by side (``uint8``, 8,359 columns),
  each molecule parsed once; ``FEATURISER_BLOCKS["fingerprints"]`` gives the blocks' widths in that order (the
  ``blocks`` of ``metalearn.activity.ActivityGP``).
- ``descriptors(smiles)``: ``DESCRIPTOR_NAMES`` in that order, ``float32`` ``(n, len(DESCRIPTOR_NAMES))``.
  A descriptor RDKit cannot compute for a molecule (NaN, e.g. Gasteiger charges of some metals) or that
  overflows float32 (inf, e.g. a huge ``BertzCT``) is stored as 0.0; ``descriptors_replaced()`` counts
  them per call so a caller can report it.
- ``tanimoto(a_bits, b_bits)``: ``(n, m)`` similarity matrix, numpy or torch in, the same kind out.
- ``FeatureCache(folder).get(featuriser, keys)``: features by compound, computed once; one file per
  featuriser (``<folder>/<featuriser>.npz``: ``keys_utf8``, the keys as UTF-8 lines, + ``values``, loaded
  with ``allow_pickle=False``; a bit featuriser's values stored with ``np.packbits`` and ``width``; a file
  of the first format, a ``keys`` unicode array, is still read) beside a snapshot or task set; a rerun reads it.

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
MACCS_BITS = 167

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


def _bit_generators(n_bits: int) -> dict:
    """The fingerprint generators of ``fingerprints`` (bench/molecules_learner.py's settings), by name."""
    from rdkit.Chem import rdFingerprintGenerator as fp

    return {"ecfp4": fp.GetMorganGenerator(radius=ECFP4_RADIUS, fpSize=n_bits),
            "atom_pairs": fp.GetAtomPairGenerator(fpSize=n_bits),
            "torsions": fp.GetTopologicalTorsionGenerator(fpSize=n_bits),
            "fcfp4": fp.GetMorganGenerator(radius=ECFP4_RADIUS, fpSize=n_bits,
                                           atomInvariantsGenerator=fp.GetMorganFeatureAtomInvGen())}


def _maccs(mol) -> np.ndarray:
    from rdkit import DataStructs
    from rdkit.Chem import MACCSkeys

    out = np.zeros(MACCS_BITS, dtype=np.uint8)
    DataStructs.ConvertToNumpyArray(MACCSkeys.GenMACCSKeys(mol), out)
    return out


def _one_generator(name: str):
    def featurise(smiles: Sequence[str], n_bits: int = N_BITS, positions: Sequence[int] | None = None) -> np.ndarray:
        gen = _bit_generators(n_bits)[name]
        out = np.zeros((len(smiles), n_bits), dtype=np.uint8)
        for i, mol in enumerate(_mols(smiles, positions)):
            out[i] = gen.GetFingerprintAsNumPy(mol)
        return out

    return featurise


atom_pair_bits = _one_generator("atom_pairs")
atom_pair_bits.__name__ = "atom_pair_bits"
atom_pair_bits.__doc__ = "Atom-pair fingerprint bits (RDKit defaults), ``uint8`` 0/1 ``(n, n_bits)``."
torsion_bits = _one_generator("torsions")
torsion_bits.__name__ = "torsion_bits"
torsion_bits.__doc__ = "Topological-torsion fingerprint bits (RDKit defaults), ``uint8`` 0/1 ``(n, n_bits)``."
fcfp4_bits = _one_generator("fcfp4")
fcfp4_bits.__name__ = "fcfp4_bits"
fcfp4_bits.__doc__ = "FCFP4 bits: Morgan radius 2 on pharmacophoric atom features, ``uint8`` 0/1 ``(n, n_bits)``."


def maccs_keys(smiles: Sequence[str], positions: Sequence[int] | None = None) -> np.ndarray:
    """The 167 MACCS structural keys (RDKit's ``MACCSkeys``; key 0 is unused, always 0), ``uint8`` 0/1."""
    mols = _mols(smiles, positions)
    out = np.zeros((len(smiles), MACCS_BITS), dtype=np.uint8)
    for i, mol in enumerate(mols):
        out[i] = _maccs(mol)
    return out


def fingerprints(smiles: Sequence[str], positions: Sequence[int] | None = None) -> np.ndarray:
    """ECFP4 | atom pairs | torsions | FCFP4 (2048 bits each) | MACCS (167): ``uint8`` 0/1 ``(n, 8359)``, the
    blocks in ``FEATURISER_BLOCKS["fingerprints"]``'s order; each molecule parsed once."""
    gens = list(_bit_generators(N_BITS).values())
    out = np.zeros((len(smiles), sum(FEATURISER_BLOCKS["fingerprints"])), dtype=np.uint8)
    for i, mol in enumerate(_mols(smiles, positions)):
        out[i] = np.concatenate([g.GetFingerprintAsNumPy(mol).astype(np.uint8) for g in gens] + [_maccs(mol)])
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
    "atom_pair_bits": atom_pair_bits,
    "torsion_bits": torsion_bits,
    "fcfp4_bits": fcfp4_bits,
    "maccs_keys": maccs_keys,
    "fingerprints": fingerprints,
}

# name -> the widths of its blocks of columns, in order (one block: the whole vector)
FEATURISER_BLOCKS: dict[str, tuple[int, ...]] = {
    "ecfp4_bits": (N_BITS,), "ecfp4_counts": (N_BITS,), "descriptors": (len(DESCRIPTOR_NAMES),),
    "atom_pair_bits": (N_BITS,), "torsion_bits": (N_BITS,), "fcfp4_bits": (N_BITS,), "maccs_keys": (MACCS_BITS,),
    "fingerprints": (N_BITS, N_BITS, N_BITS, N_BITS, MACCS_BITS),
}

# 0/1 featurisers: the cache stores them bit-packed (8 compounds' bits per byte: fingerprints take 1 kB a compound)
BIT_FEATURISERS = frozenset({"ecfp4_bits", "atom_pair_bits", "torsion_bits", "fcfp4_bits", "maccs_keys", "fingerprints"})


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
                    if "keys_utf8" in stored:  # the keys as UTF-8 lines (a fixed-width unicode array is 4 bytes a
                        text = stored["keys_utf8"].tobytes().decode()  # character of the longest SMILES, each)
                        keys = text.split("\n") if text else []
                    else:
                        keys = stored["keys"]
                    values = stored["values"]
                    if "width" in stored:  # bit-packed (BIT_FEATURISERS)
                        values = np.unpackbits(values, axis=1, count=int(stored["width"]))
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
        keys = np.frombuffer("\n".join(sorted(index, key=index.__getitem__)).encode(), dtype=np.uint8)
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{featuriser}.", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                if featuriser in BIT_FEATURISERS:
                    np.savez(f, keys_utf8=keys, values=np.packbits(values, axis=1), width=np.int64(values.shape[1]))
                else:
                    np.savez(f, keys_utf8=keys, values=values)
            os.replace(tmp, self.path(featuriser))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
