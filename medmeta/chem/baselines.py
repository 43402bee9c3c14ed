"""The baselines medicinal chemists trust (issue 15), fitted on one draw's support set only.

Each is ``fn(support_x, support_y, query_x, seed) -> scores`` (``float64`` ``(n_query,)``, higher =
more likely active), deterministic by ``seed``; ``BASELINES`` maps a name to (function, featuriser
name in ``medmeta.chem.features.FEATURISERS``).

- ``random_forest``: scikit-learn ``RandomForestClassifier``, 100 trees, otherwise its defaults
  (sqrt(features) per split, fully grown trees), one core; score = the predicted probability of active.
- ``logistic_regression``: L2-regularised, ``C = 1.0`` (scikit-learn's default, no per-task tuning:
  a support of 16 is too small to cross-validate C), lbfgs, up to 1,000 iterations; score = the
  predicted probability of active.
- ``tanimoto_knn``: the ``k = 5`` support compounds most Tanimoto-similar to a query compound (ties:
  the lower support index), score = their similarity-weighted fraction of actives plus 1e-3 times the
  (mean similarity to the support's actives - to its inactives), which only breaks ties among the
  few vote values. Uses no randomness (``seed`` is accepted for the common signature).

scikit-learn is imported inside the functions (lazy).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from medmeta.chem.features import tanimoto

KNN_K = 5
RF_TREES = 100
LR_C = 1.0

Baseline = Callable[[np.ndarray, np.ndarray, np.ndarray, int], np.ndarray]


def _check(support_x: np.ndarray, support_y: np.ndarray, query_x: np.ndarray) -> np.ndarray:
    y = np.asarray(support_y).astype(np.int64)
    if support_x.shape[0] != len(y) or set(np.unique(y)) != {0, 1}:
        raise ValueError("a baseline needs a support set with both classes (0 and 1) and one label per compound")
    if query_x.shape[1:] != support_x.shape[1:]:
        raise ValueError(f"support and query features differ in shape: {support_x.shape[1:]} vs {query_x.shape[1:]}")
    return y


def random_forest(support_x: np.ndarray, support_y: np.ndarray, query_x: np.ndarray, seed: int) -> np.ndarray:
    """Random forest of ``RF_TREES`` trees on the support set; P(active) of each query compound."""
    from sklearn.ensemble import RandomForestClassifier

    y = _check(support_x, support_y, query_x)
    model = RandomForestClassifier(n_estimators=RF_TREES, random_state=seed, n_jobs=1)
    model.fit(support_x, y)
    return model.predict_proba(query_x)[:, list(model.classes_).index(1)].astype(np.float64)


def logistic_regression(support_x: np.ndarray, support_y: np.ndarray, query_x: np.ndarray, seed: int) -> np.ndarray:
    """L2 logistic regression (``C = LR_C``) on the support set; P(active) of each query compound."""
    from sklearn.linear_model import LogisticRegression

    y = _check(support_x, support_y, query_x)
    model = LogisticRegression(C=LR_C, max_iter=1000, random_state=seed)
    model.fit(np.asarray(support_x, dtype=np.float64), y)
    return model.predict_proba(np.asarray(query_x, dtype=np.float64))[:, list(model.classes_).index(1)]


def tanimoto_knn(support_x: np.ndarray, support_y: np.ndarray, query_x: np.ndarray, seed: int) -> np.ndarray:
    """Similarity-weighted vote of the ``KNN_K`` most Tanimoto-similar support compounds (bit vectors)."""
    y = _check(support_x, support_y, query_x).astype(np.float64)
    sim = tanimoto(query_x, support_x).astype(np.float64)  # (query, support)
    k = min(KNN_K, len(y))
    nearest = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    weights = np.take_along_axis(sim, nearest, axis=1)
    votes = (weights * y[nearest]).sum(1) / np.maximum(weights.sum(1), 1e-12)
    votes[weights.sum(1) == 0] = 0.5
    tie_break = sim[:, y == 1].mean(1) - sim[:, y == 0].mean(1)
    return votes + 1e-3 * tie_break


BASELINES: dict[str, tuple[Baseline, str]] = {
    "rf": (random_forest, "ecfp4_bits"),
    "logistic_regression": (logistic_regression, "ecfp4_bits"),
    "tanimoto_knn": (tanimoto_knn, "ecfp4_bits"),
}
