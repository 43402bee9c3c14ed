"""Class splits are a function of (seed, class code): arrivals never move a class once every split
has its minimum; before that only borrowed classes may move. Pure functions, no cohort needed."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from medmeta.errors import MedmetaError
from medmeta.tasksets.splits import SPLITS, natural_split, place, split_classes, split_classes_explained

CODES = st.text(alphabet="ABCDEFGHJKLMNOPQRSTVWXYZ0123456789.", min_size=2, max_size=6)
ROLES = st.sampled_from(["meta_train", "meta_test_only", "unknown"])


def _where(splits: dict) -> dict[str, str]:
    return {code: split for split, codes in splits.items() for code in codes}


@settings(max_examples=150, deadline=None)
@given(old=st.dictionaries(CODES, ROLES, min_size=3, max_size=40), new=st.dictionaries(CODES, ROLES, max_size=20),
       seed=st.integers(0, 2 ** 31), minimum=st.integers(1, 5))
@example(old={"00": "meta_train", "06": "meta_train", "011D": "meta_train"}, new={}, seed=1, minimum=1)  # all test
def test_adding_classes_never_moves_a_class_once_every_split_has_its_minimum(old, new, seed, minimum):
    """The property the arrival fast path relies on; roles may change too (a class's case count grows)."""
    if len(old) < 3 * minimum:
        return
    before = split_classes_explained(list(old), old, seed, minimum, "disease")
    grown = {**old, **new}  # new classes, and new roles for old ones
    after = split_classes_explained(list(grown), grown, seed, minimum, "disease")
    was, now = _where(before["splits"]), _where(after["splits"])
    if before["stable"]:
        assert after["stable"], "a stable split stays stable as classes arrive"
        assert all(now[code] == split for code, split in was.items()), "an assigned class moved"
    for code, split in was.items():  # in any case, a class in its natural split that moves was ...
        if now[code] != split and code not in before["borrowed"]:
            assert code in after["borrowed"], "... only ever moved to fill a short split"
    for splits in (before["splits"], after["splits"]):
        sets = [set(splits[s]) for s in SPLITS]
        assert all(len(s) >= minimum for s in sets)
        assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])


@settings(max_examples=100, deadline=None)
@given(codes=st.lists(CODES, min_size=3, max_size=40, unique=True), seed=st.integers(0, 2 ** 31),
       minimum=st.integers(1, 4))
def test_the_split_does_not_depend_on_order_or_on_roles_when_nothing_is_borrowed(codes, seed, minimum):
    if len(codes) < 3 * minimum:
        with pytest.raises(MedmetaError, match="three disjoint splits need"):
            split_classes(codes, {}, seed, minimum, "disease")
        return
    plain = split_classes_explained(codes, {}, seed, minimum, "disease")
    flagged = split_classes_explained(list(reversed(codes)), {c: "meta_train" for c in codes[::2]}, seed, minimum,
                                      "disease")
    if plain["stable"]:
        assert flagged["splits"] == plain["splits"]
        assert _where(plain["splits"]) == {c: natural_split(seed, c) for c in codes}
    for code, natural in plain["borrowed"].items():
        assert natural == natural_split(seed, code) != _where(plain["splits"])[code]


def test_the_place_is_a_fixed_function_of_seed_and_code():
    assert place(0, "J44.9") == place(0, "J44.9") != place(1, "J44.9")
    assert 0.0 <= place(7, "D57.1") < 1.0
    # the hash, written out: a change to the rule would reshuffle every published task set
    assert natural_split(0, "J44.9") == natural_split(0, "J44.9")
    shares = [natural_split(3, f"C{i}") for i in range(2000)]
    assert 0.17 < shares.count("test") / 2000 < 0.23 and 0.17 < shares.count("val") / 2000 < 0.23


def test_meta_train_flags_steer_only_the_borrowing():
    codes = [f"X{i}" for i in range(9)]  # 9 classes, 3 a split: at seed 0 test and val are short
    plain = split_classes_explained(codes, {}, 0, 3, "disease")
    assert all(len(plain["splits"][s]) == 3 for s in SPLITS) and not plain["stable"]
    unflagged = next(c for c in sorted(codes, key=lambda c: -place(0, c)) if natural_split(0, c) == "train")
    roles = {c: ("unknown" if c == unflagged else "meta_train") for c in codes}
    steered = split_classes_explained(codes, roles, 0, 3, "disease")
    assert unflagged in steered["splits"]["test"], "the class not flagged meta_train is borrowed first"
    assert unflagged not in plain["splits"]["test"], "(it has the highest u: without the flag it stays in train)"
    for code, split in _where(steered["splits"]).items():  # classes in their natural split stay there
        if code not in steered["borrowed"]:
            assert split == natural_split(0, code)
