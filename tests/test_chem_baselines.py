"""The baselines on a generated problem with a known answer: real compounds of a MoleculeACE table,
labelled active when they contain a fluorobenzene (a substructure ECFP4 sees). Each baseline, fitted
on 16 support compounds, ranks the rest well above chance, and is deterministic by seed."""

from __future__ import annotations

import numpy as np
import pytest

from tests.chem_tables import table_rows

pytest.importorskip("rdkit")
pytest.importorskip("sklearn")

from medmeta.chem.baselines import BASELINES, logistic_regression, random_forest, tanimoto_knn  # noqa: E402
from medmeta.chem.features import FEATURISERS, ecfp4_bits  # noqa: E402
from medmeta.chem.protocol import delta_auprc, draw, draw_rng  # noqa: E402


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    from rdkit import Chem

    smiles = table_rows(tmp_path_factory.mktemp("tables"), "CHEMBL2034_Ki", 300)
    pattern = Chem.MolFromSmarts("c1ccccc1F")
    y = np.array([Chem.MolFromSmiles(s).HasSubstructMatch(pattern) for s in smiles], dtype=np.int64)
    assert 0.2 < y.mean() < 0.5  # the test's own count: both classes well represented
    return ecfp4_bits(smiles), y


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_each_baseline_finds_the_substructure_from_16_compounds(problem, name):
    fn, featuriser = BASELINES[name]
    assert featuriser in FEATURISERS
    x, y = problem
    scores = []
    for k in range(3):
        support, query = draw(y, 16, draw_rng(0, "fluorobenzene", 16, k))
        s = fn(x[support], y[support], x[query], k)
        assert s.shape == (len(query),) and np.isfinite(s).all()
        scores.append(delta_auprc(y[query], s))
    assert np.mean(scores) > 0.25, scores  # chance is 0; a perfect ranking gets about 0.75 here


@pytest.mark.parametrize("fn", [random_forest, logistic_regression, tanimoto_knn])
def test_same_seed_same_scores(problem, fn):
    x, y = problem
    support, query = draw(y, 16, draw_rng(1, "fluorobenzene", 16, 0))
    first = fn(x[support], y[support], x[query], 7)
    assert np.array_equal(first, fn(x[support], y[support], x[query], 7))


def test_the_forest_depends_on_its_seed(problem):
    x, y = problem
    support, query = draw(y, 16, draw_rng(1, "fluorobenzene", 16, 0))
    assert not np.array_equal(random_forest(x[support], y[support], x[query], 0),
                              random_forest(x[support], y[support], x[query], 1))


def test_a_support_set_of_one_class_is_refused(problem):
    x, y = problem
    with pytest.raises(ValueError, match="both classes"):
        random_forest(x[:4], np.ones(4, dtype=np.int64), x[4:], 0)
