"""Classes to meta-train, meta-validation and meta-test: disjoint, deterministic by seed.

A class (disease or drug) takes part when it has enough cases for one episode (``eligible``);
the others are excluded with their reason and kept as adaptation-only classes. Of the eligible
ones, validation and test get ``max(minimum, round(20%))`` classes each and train the rest.
Meta-train is filled first with classes the validation flagged ``meta_train`` (label coverage),
in a seeded order, so classes flagged ``meta_test_only`` reach meta-train only when too few others
exist; the rest are dealt to validation and test in a seeded order.
"""

from __future__ import annotations

import numpy as np

from medmeta.errors import MedmetaError

SPLITS = ("train", "val", "test")
HELD_OUT_FRACTION = 0.2  # of the eligible classes, for validation and again for test


def split_classes(eligible: list[str], roles: dict[str, str], seed: int, minimum: int, unit: str,
                  need: str = "") -> dict[str, list[str]]:
    """``{"train": [...], "val": [...], "test": [...]}``, each sorted; ``minimum`` classes at least per split."""
    codes = sorted(eligible)
    held = max(minimum, int(round(HELD_OUT_FRACTION * len(codes))))
    n_train = len(codes) - 2 * held
    if n_train < minimum:
        raise MedmetaError(f"only {len(codes)} {unit}s have enough cases for an episode{need}; three disjoint splits "
                           f"need at least {3 * minimum} ({minimum} each): lower --ways, --shots or --queries, "
                           "or ingest more patients")
    rng = np.random.default_rng(seed)
    rank = rng.permutation(len(codes))
    by_preference = sorted(range(len(codes)), key=lambda i: (roles.get(codes[i]) != "meta_train", rank[i]))
    train = [codes[i] for i in by_preference[:n_train]]
    rest = [codes[i] for i in by_preference[n_train:]]
    rest = [rest[i] for i in rng.permutation(len(rest))]
    return {"train": sorted(train), "val": sorted(rest[:held]), "test": sorted(rest[held:])}
