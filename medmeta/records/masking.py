"""A value that must never be written as text, written as what it is instead.

A value that failed a check (a name typed into a code column, a free-text unit) may be PHI, so
wherever medmeta records it outside the quarantine folder (the record quarantine, the
validation quarantine, the validation report and its Data Docs) it is replaced by ``masked``:

    value:a2f09c13e74b5d61, 11 chars, letters+space+punct

a keyed hash of the value (``Pseudonymizer.value_token``: the same value always gives the same
hash, and only a holder of the key can compute it, so an operator can find the value in the
source file and nobody else can test a guess), its length in characters and the kinds of
character it holds, in the fixed order of ``CHARACTER_CLASSES``. The mask holds no ``|`` or
backtick, so it sits in a Markdown table as it is.
"""

from __future__ import annotations

import unicodedata

from medmeta.pseudonyms import Pseudonymizer

# The kinds of character a mask may name, in the order it names them.
CHARACTER_CLASSES = ("letters", "non-ascii letters", "digits", "space", "punct", "other")


def character_class(char: str) -> str:
    """The kind of one character: ASCII letters, other letters, ASCII digits, the space, ASCII
    punctuation; anything else (controls, other spaces, lone surrogates, symbols) is "other"."""
    if char.isascii() and char.isalpha():
        return "letters"
    if char.isascii() and char.isdigit():
        return "digits"
    if char == " ":
        return "space"
    if char.isascii() and char.isprintable():
        return "punct"
    if unicodedata.category(char).startswith("L"):
        return "non-ascii letters"
    return "other"


def character_classes(value: str) -> str:
    """The kinds of character ``value`` holds, "+"-joined in ``CHARACTER_CLASSES`` order ("empty": none)."""
    present = {character_class(c) for c in value}
    return "+".join(c for c in CHARACTER_CLASSES if c in present) or "empty"


def masked(value: str, pseudonymizer: Pseudonymizer) -> str:
    """``value`` as its keyed hash, length and character classes; never any of its text."""
    value = str(value)
    return f"value:{pseudonymizer.value_token(value)}, {len(value)} chars, {character_classes(value)}"
