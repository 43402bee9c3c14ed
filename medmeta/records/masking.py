"""A value that must never be written as text, written as what it is instead.

A value that failed a check (a name typed into a code column, a free-text unit) may be PHI, so
wherever medmeta records it outside the quarantine folder (the record quarantine, the
validation quarantine, the validation report and its Data Docs) it is replaced by ``masked``:

    masked(a2f09c13e74b5d61 len=11 upper+lower+space+punct)

a keyed hash of the value (``Pseudonymizer.value_token``: the same value always gives the same
hash, and only a holder of the key can compute it, so an operator can find the value in the
source file and nobody else can test a guess), its length in characters and the classes of the
characters it holds, in the fixed order of ``CHARACTER_CLASSES``. The mask holds no ``|`` or
backtick, so it sits in a Markdown table as it is.
"""

from __future__ import annotations

import unicodedata

from medmeta.pseudonyms import Pseudonymizer

# The classes a mask may name, in the order it names them.
CHARACTER_CLASSES = ("upper", "lower", "digit", "space", "punct", "control", "non-ascii")
MASK_PREFIX = "masked("


def character_class(char: str) -> str:
    """The class of one character: ASCII letters by case, digits, whitespace, ASCII
    punctuation, control and format characters (any script), everything else non-ASCII."""
    if char.isascii():
        if char.isupper():
            return "upper"
        if char.islower():
            return "lower"
        if char.isdigit():
            return "digit"
        if char.isspace():
            return "space"
        if char.isprintable():
            return "punct"
        return "control"
    if unicodedata.category(char) in ("Cc", "Cf", "Cs", "Zl", "Zp"):  # incl. U+2028 and lone surrogates
        return "control"
    return "space" if char.isspace() else "non-ascii"


def character_classes(value: str) -> list[str]:
    """The classes of the characters in ``value``, in ``CHARACTER_CLASSES`` order."""
    present = {character_class(c) for c in value}
    return [c for c in CHARACTER_CLASSES if c in present]


def masked(value: str, pseudonymizer: Pseudonymizer) -> str:
    """``value`` as its keyed hash, length and character classes; never any of its text."""
    value = str(value)
    classes = "+".join(character_classes(value)) or "empty"
    return f"{MASK_PREFIX}{pseudonymizer.value_token(value)} len={len(value)} {classes})"
