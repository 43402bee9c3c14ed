"""masked(): a value that must not be written as text, as its keyed hash, length and classes."""

from __future__ import annotations

import re

from hypothesis import given, strategies as st

from medmeta.pseudonyms import Pseudonymizer
from medmeta.records.masking import CHARACTER_CLASSES, character_classes, masked
from tests.conftest import TEST_KEY

KEY = Pseudonymizer(TEST_KEY)
MASK = re.compile(r"value:([0-9a-f]{16}), (\d+) chars, ([a-z+ -]+)")


def test_a_name_becomes_its_hash_length_and_classes():
    mask = masked("Smith, John", KEY)
    match = MASK.fullmatch(mask)
    assert match and match[2] == "11" and match[3] == "letters+space+punct"
    assert "Smith" not in mask and "John" not in mask


def test_the_hash_is_keyed_and_stable():
    assert masked("Smith, John", KEY) == masked("Smith, John", Pseudonymizer(TEST_KEY))
    assert masked("Smith, John", KEY) != masked("Smith, Joan", KEY)
    assert masked("Smith, John", KEY) != masked("Smith, John", Pseudonymizer("another-key-0123456789"))


def test_odd_text_is_masked_not_refused():
    assert masked("", KEY).endswith(", 0 chars, empty")
    assert masked("a\u2028b", KEY).endswith(", 3 chars, letters+other")
    assert masked("M\udcfcller", KEY).endswith(", 6 chars, letters+other")  # a surrogate-escaped byte
    assert masked("Müller\x1b[31m", KEY).endswith(", 11 chars, letters+non-ascii letters+digits+punct+other")
    assert "`" not in masked("`|`", KEY) and "|" not in masked("`|`", KEY)


@given(st.text())
def test_every_text_gives_a_well_formed_mask(value):
    match = MASK.fullmatch(masked(value, KEY))
    assert match and int(match[2]) == len(value) and match[3] == character_classes(value)
    classes = [] if match[3] == "empty" else match[3].split("+")
    assert classes == [c for c in CHARACTER_CLASSES if c in classes]
