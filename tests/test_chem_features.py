"""ECFP4 bits and counts, RDKit descriptors, Tanimoto similarity and the feature cache, on real
compounds from a MoleculeACE table (RDKit, no mocks)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from tests.chem_tables import table_rows

pytest.importorskip("rdkit")

from medmeta.chem import features  # noqa: E402
from medmeta.chem.features import (DESCRIPTOR_NAMES, FeatureCache, descriptors, descriptors_replaced,  # noqa: E402
                                   ecfp4_bits, ecfp4_counts, tanimoto)
from medmeta.errors import UNPARSEABLE_SMILES, Rejected  # noqa: E402


@pytest.fixture(scope="module")
def smiles(tmp_path_factory) -> list[str]:
    return table_rows(tmp_path_factory.mktemp("tables"), "CHEMBL237_Ki", 40)


def test_ecfp4_bits_are_rdkit_morgan_radius_2(smiles):
    from rdkit import Chem
    from rdkit.Chem import rdFingerprintGenerator

    bits = ecfp4_bits(smiles)
    assert bits.shape == (40, 2048) and bits.dtype == np.uint8 and set(np.unique(bits)) <= {0, 1}
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
    on = list(gen.GetFingerprint(Chem.MolFromSmiles(smiles[3])).GetOnBits())
    assert np.flatnonzero(bits[3]).tolist() == on
    assert ecfp4_bits(smiles[:2], n_bits=1024).shape == (2, 1024)


def test_counts_agree_with_bits_and_count_repeats(smiles):
    counts = ecfp4_counts(smiles)
    assert counts.dtype == np.uint8 and np.array_equal(counts > 0, ecfp4_bits(smiles) == 1)
    assert counts.max() > 1  # real molecules repeat environments (CH2 in a chain, aromatic CH)


def test_a_molecule_written_two_ways_has_one_fingerprint():
    assert np.array_equal(*ecfp4_bits(["OCC1=CC=CC=C1", "c1ccccc1CO"]))


def test_descriptors_are_the_named_list_and_finite(smiles):
    values = descriptors(["CCO", *smiles[:5]])
    assert values.shape == (6, len(DESCRIPTOR_NAMES)) and values.dtype == np.float32
    assert np.isfinite(values).all()
    assert values[0, DESCRIPTOR_NAMES.index("MolWt")] == pytest.approx(46.07, abs=0.01)
    assert values[0, DESCRIPTOR_NAMES.index("NumHDonors")] == 1


def test_descriptors_rdkit_cannot_compute_become_zero_and_are_counted():
    values = descriptors(["C[As](C)C"])  # no Gasteiger parameters for arsenic: NaN partial charges
    charges = [DESCRIPTOR_NAMES.index(n) for n in ("MaxPartialCharge", "MinPartialCharge",
                                                   "MaxAbsPartialCharge", "MinAbsPartialCharge")]
    assert descriptors_replaced() == 4 and (values[0, charges] == 0).all() and np.isfinite(values).all()


def test_an_unparseable_smiles_is_named_by_index_never_quoted(smiles):
    bad = "C1CC(N"
    for fn in (ecfp4_bits, ecfp4_counts, descriptors):
        with pytest.raises(Rejected) as caught:
            fn([smiles[0], smiles[1], bad])
        assert caught.value.code == UNPARSEABLE_SMILES and "index 2" in str(caught.value) and bad not in str(caught.value)


def test_tanimoto_values_numpy_and_torch():
    import torch

    a = np.array([[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=np.uint8)
    b = np.array([[1, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=np.uint8)
    expected = np.array([[1 / 3, 1, 0], [0, 0, 0], [0.5, 0.5, 0]], dtype=np.float32)
    assert np.allclose(tanimoto(a, b), expected)
    got = tanimoto(torch.from_numpy(a), torch.from_numpy(b))
    assert isinstance(got, torch.Tensor) and np.allclose(got.numpy(), expected)


def test_tanimoto_of_real_fingerprints_is_one_on_the_diagonal(smiles):
    bits = ecfp4_bits(smiles[:10])
    sim = tanimoto(bits, bits)
    assert np.allclose(np.diag(sim), 1) and np.allclose(sim, sim.T) and (sim >= 0).all() and (sim <= 1).all()


def test_cache_computes_once_and_a_rerun_reads_it_back(smiles, tmp_path):
    first = FeatureCache(tmp_path)
    bits = first.get("ecfp4_bits", smiles[:20])
    assert first.computed == {"ecfp4_bits": 20} and first.path("ecfp4_bits").exists()
    assert np.array_equal(bits, ecfp4_bits(smiles[:20]))

    rerun = FeatureCache(tmp_path)  # a new process would start like this
    again = rerun.get("ecfp4_bits", list(reversed(smiles[:20])))
    assert rerun.computed == {} and np.array_equal(again, bits[::-1])
    with np.load(rerun.path("ecfp4_bits"), allow_pickle=False) as stored:  # plain arrays, no pickle
        assert stored["values"].shape == (20, 2048 // 8) and int(stored["width"]) == 2048  # bit-packed

    more = rerun.get("ecfp4_bits", smiles[15:25] + smiles[15:25])
    assert rerun.computed == {"ecfp4_bits": 5} and np.array_equal(more, ecfp4_bits(smiles[15:25] * 2))
    assert FeatureCache(tmp_path).get("descriptors", smiles[:2]).shape == (2, len(DESCRIPTOR_NAMES))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["descriptors.npz", "ecfp4_bits.npz"]


def test_cache_names_an_unparseable_smiles_by_its_index_in_the_request(smiles, tmp_path):
    cache = FeatureCache(tmp_path)
    cache.get("ecfp4_counts", smiles[:3])
    with pytest.raises(Rejected, match="index 4"):
        cache.get("ecfp4_counts", [*smiles[:4], "not a molecule"])
    with pytest.raises(ValueError, match="unknown featuriser"):
        cache.get("ecfp6", smiles[:1])


def test_importing_the_chem_modules_imports_neither_rdkit_nor_sklearn():
    code = ("import sys, medmeta.chem.features, medmeta.chem.protocol, medmeta.chem.baselines; "
            "print(sorted(m for m in ('rdkit', 'sklearn', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert features.FEATURISERS.keys() == {"ecfp4_bits", "ecfp4_counts", "descriptors", "atom_pair_bits",
                                           "torsion_bits", "fcfp4_bits", "maccs_keys", "fingerprints"}
