"""Classes to meta-train, meta-validation and meta-test: disjoint, and stable as cases and classes arrive.

A class (disease or drug) takes part when it has enough cases for one episode (``eligible``);
the others are excluded with their reason and kept as adaptation-only classes.

Each eligible class has a place ``u`` in [0, 1): the first 8 bytes of SHA-256 of
``"<seed>:<class code>"`` read as a number. Its **natural split** depends on ``u`` alone:
meta-test when ``u < 0.2``, meta-validation when ``0.2 <= u < 0.4``, meta-train otherwise. So a
class's split never depends on which other classes exist, how many cases anything has, or the
order classes arrive in.

Each split needs ``minimum`` classes (the ways of an episode). Only while a split's natural
members are fewer than that does it **borrow**: test takes its ``minimum`` from the lowest ``u``
first, validation the next lowest, train (when still short) from the validation then test classes
with the highest ``u``, never leaving those below their minimum. Borrowing prefers classes the
validation did not flag ``meta_train`` (label coverage) for validation and test, and flagged ones
for train; otherwise the validation's flags (``roles``) no longer decide a class's split, because a
flag changes with a class's case count, and a split must not.

When a class can move:

- a class in its natural split never moves while every split holds at least ``minimum`` natural
  members: new classes and new cases only add members;
- a borrowed class (``borrowed`` in :func:`split_classes_explained`) may return to its natural
  split when a later arrival gives the short split enough natural members, and borrowing may pick
  another class when arrivals change which classes are eligible or flagged. A task set whose every
  split has its minimum naturally says so (``stable: true`` in its manifest's ``split_rule``).

Fewer than ``3 * minimum`` eligible classes is an error, as before.
"""

from __future__ import annotations

import hashlib

from medmeta.errors import MedmetaError

SPLITS = ("train", "val", "test")
HELD_OUT_FRACTION = 0.2  # of the hash range, for meta-test [0, 0.2) and again for meta-validation [0.2, 0.4)
RULE = ("sha256(seed:code) -> u in [0,1): test u<0.2, val 0.2<=u<0.4, train otherwise; a split short of its "
        "minimum borrows (test and val the lowest u, train the highest) until it has it")


def place(seed: int, code: str) -> float:
    """The class's place in [0, 1): a function of the seed and the class code only."""
    digest = hashlib.sha256(f"{int(seed)}:{code}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def natural_split(seed: int, code: str) -> str:
    """The split ``code`` belongs to when no split is short of classes."""
    u = place(seed, code)
    return "test" if u < HELD_OUT_FRACTION else "val" if u < 2 * HELD_OUT_FRACTION else "train"


def split_classes(eligible: list[str], roles: dict[str, str], seed: int, minimum: int, unit: str,
                  need: str = "") -> dict[str, list[str]]:
    """``{"train": [...], "val": [...], "test": [...]}``, each sorted; ``minimum`` classes at least per split."""
    return split_classes_explained(eligible, roles, seed, minimum, unit, need)["splits"]


def split_classes_explained(eligible: list[str], roles: dict[str, str], seed: int, minimum: int, unit: str,
                            need: str = "") -> dict:
    """The splits plus ``borrowed`` (code -> its natural split, for classes placed elsewhere) and
    ``stable`` (no split borrowed: every class sits in its natural split)."""
    codes = sorted(set(eligible))
    if len(codes) < 3 * minimum:
        raise MedmetaError(f"only {len(codes)} {unit}s have enough cases for an episode{need}; three disjoint splits "
                           f"need at least {3 * minimum} ({minimum} each): lower --ways, --shots or --queries, "
                           "or ingest more patients")
    u = {code: place(seed, code) for code in codes}
    natural = {code: natural_split(seed, code) for code in codes}
    members = {split: {c for c in codes if natural[c] == split} for split in SPLITS}

    def held_out_preference(code: str):  # for val and test: not flagged meta_train first, then the lowest u
        return roles.get(code) == "meta_train", u[code]

    for split in ("test", "val"):
        short = minimum - len(members[split])
        if short <= 0:
            continue
        pool = members["val"] | members["train"] if split == "test" else members["train"]
        donors = sorted(pool, key=held_out_preference)  # test may take from val, which then borrows from train
        for code in donors[:short]:
            for s in SPLITS:
                members[s].discard(code)
            members[split].add(code)
    short = minimum - len(members["train"])
    if short > 0:  # train borrows the highest u of val, then of test, leaving each its minimum
        for split in ("val", "test"):
            spare = len(members[split]) - minimum
            pick = sorted(members[split], key=lambda c: (roles.get(c) != "meta_train", -u[c]))[:max(0, min(spare, short))]
            for code in pick:
                members[split].discard(code)
                members["train"].add(code)
            short -= len(pick)
    for split in SPLITS:  # a split still short (its usual donors had nothing to spare): any surplus fills it
        while len(members[split]) < minimum:
            donor = max((s for s in SPLITS if s != split), key=lambda s: (len(members[s]) - minimum, s))
            if len(members[donor]) <= minimum:
                break  # cannot happen with 3 * minimum classes or more
            order = held_out_preference if split != "train" else (lambda c: (roles.get(c) != "meta_train", -u[c]))
            code = min(members[donor], key=order)
            members[donor].discard(code)
            members[split].add(code)
    splits = {split: sorted(members[split]) for split in SPLITS}
    borrowed = {c: natural[c] for split in SPLITS for c in splits[split] if natural[c] != split}
    return {"splits": splits, "borrowed": borrowed, "stable": not borrowed}
