"""Check digits of code systems: SNOMED CT identifiers (Verhoeff) and LOINC codes (mod 10).

A code that has the right shape but a wrong check digit is a typing or transfer error (one
digit changed, two neighbours swapped): these checks catch it without any licensed terminology
content. Plain Python: ingest checks every code with them before it is stored
(``medmeta.records.vocabulary``), and validation wraps them as GX expectations
(``validation/check_digits.py``, ``validation/code_expectations.py``).

- SNOMED CT identifier (SCTID): 6 to 18 digits, no leading zero, the last digit a Verhoeff
  check digit over the others (SNOMED CT Technical Implementation Guide, "Check-digit").
- LOINC code: 1 to 7 digits, a hyphen and a check digit computed by LOINC's "mod 10" algorithm
  over the digits before the hyphen (LOINC Users' Guide, "Calculating Mod 10 check digits"),
  which is the Luhn check.
"""

from __future__ import annotations

import re

# Verhoeff: multiplication in the dihedral group D5 and a position permutation (validation
# needs no inverse table: a valid number checks to 0).
_D = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    (1, 2, 3, 4, 0, 6, 7, 8, 9, 5),
    (2, 3, 4, 0, 1, 7, 8, 9, 5, 6),
    (3, 4, 0, 1, 2, 8, 9, 5, 6, 7),
    (4, 0, 1, 2, 3, 9, 5, 6, 7, 8),
    (5, 9, 8, 7, 6, 0, 4, 3, 2, 1),
    (6, 5, 9, 8, 7, 1, 0, 4, 3, 2),
    (7, 6, 5, 9, 8, 2, 1, 0, 4, 3),
    (8, 7, 6, 5, 9, 3, 2, 1, 0, 4),
    (9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
)
# position permutation: the i-th is the first applied i times (p(i+1, j) = p(i, p(1, j)))
_P1 = (1, 5, 7, 6, 2, 8, 3, 0, 9, 4)
_P = [tuple(range(10))]
for _ in range(7):
    _P.append(tuple(_P1[j] for j in _P[-1]))
_P = tuple(_P)

SCTID = re.compile(r"[1-9][0-9]{5,17}")
LOINC = re.compile(r"[0-9]{1,7}-[0-9]")


def verhoeff_valid(digits: str) -> bool:
    """True when ``digits`` (its last digit the check digit) passes the Verhoeff check."""
    check = 0
    for position, digit in enumerate(reversed(digits)):
        check = _D[check][_P[position % 8][ord(digit) - 48]]
    return check == 0


def luhn_check_digit(digits: str) -> int:
    """The mod-10 (Luhn) check digit of ``digits``: LOINC's check digit of its number part."""
    total = 0
    for position, digit in enumerate(reversed(digits)):
        value = ord(digit) - 48
        if position % 2 == 0:  # the rightmost digit and every second one from it are doubled
            value *= 2
            value = value - 9 if value > 9 else value
        total += value
    return (10 - total % 10) % 10


def is_valid_sctid(code: object) -> bool:
    """A well-formed SNOMED CT identifier: 6-18 digits, no leading 0, a valid Verhoeff check digit."""
    text = str(code)
    return SCTID.fullmatch(text) is not None and verhoeff_valid(text)


def is_valid_loinc(code: object) -> bool:
    """A well-formed LOINC code: ``NNNNN-C`` with 1-7 digits and its mod-10 check digit ``C``."""
    text = str(code)
    if LOINC.fullmatch(text) is None:
        return False
    number, check = text.split("-")
    return luhn_check_digit(number) == int(check)
