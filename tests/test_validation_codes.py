"""Code formats per code system: the SNOMED CT and LOINC check digits on real codes, in plain
Python and as GX expectations, and the regex rules of the other systems.

The real codes are every SNOMED CT and LOINC coding in the shared 100-patient Synthea export
(../shared/realdata), read here with the test's own code: all must be valid, and every
single-digit change of each must be invalid. The reference implementations below are written
from the specifications, independently of validation/check_digits.py.
"""

from __future__ import annotations

import json
import textwrap

import pandas as pd
import pytest

from medmeta.terminology.systems import ATC, ICD10, ICD10CM, LOINC, NDC, RXNORM, SNOMED
from tests.realdata import BUNDLES_100P, copy_export, needs_realdata
from tests.test_validation_core import KEY, canonical_frame
from validation.check_digits import is_valid_loinc, is_valid_sctid
from validation.rules import load_rules
from validation.run import validate_tables


# ---- reference implementations, from the specifications ----

# Verhoeff (1969), as in the SNOMED CT Technical Implementation Guide: the multiplication table
# of D5, the permutation table and the inverse table, written out.
VERHOEFF_D = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 0, 6, 7, 8, 9, 5], [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
    [3, 4, 0, 1, 2, 8, 9, 5, 6, 7], [4, 0, 1, 2, 3, 9, 5, 6, 7, 8], [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
    [6, 5, 9, 8, 7, 1, 0, 4, 3, 2], [7, 6, 5, 9, 8, 2, 1, 0, 4, 3], [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
    [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
]
VERHOEFF_P = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 5, 7, 6, 2, 8, 3, 0, 9, 4], [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
    [8, 9, 1, 6, 0, 4, 3, 5, 2, 7], [9, 4, 5, 3, 1, 2, 6, 8, 7, 0], [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
    [2, 7, 9, 3, 8, 0, 6, 4, 1, 5], [7, 0, 4, 6, 9, 1, 3, 2, 5, 8],
]
VERHOEFF_INV = [0, 4, 3, 2, 1, 5, 6, 7, 8, 9]


def reference_verhoeff_check_digit(payload: str) -> str:
    """The check digit to append to ``payload`` (the digits are processed right to left, the
    check digit's future position being 0)."""
    c = 0
    for i, ch in enumerate(reversed(payload)):
        c = VERHOEFF_D[c][VERHOEFF_P[(i + 1) % 8][int(ch)]]
    return str(VERHOEFF_INV[c])


def reference_sctid(code: str) -> bool:
    if not (code.isascii() and code.isdigit() and 6 <= len(code) <= 18 and code[0] != "0"):
        return False
    return reference_verhoeff_check_digit(code[:-1]) == code[-1]


def reference_loinc(code: str) -> bool:
    """LOINC Users' Guide, "Calculating Mod 10 check digits", step by step."""
    number, dash, check = code.rpartition("-")
    if not (dash and number.isascii() and number.isdigit() and 1 <= len(number) <= 7
            and len(check) == 1 and check.isdigit()):
        return False
    from_right = number[::-1]
    odd = "".join(from_right[0::2])  # 1st, 3rd, 5th ... digits counting from the right
    even = "".join(from_right[1::2])
    doubled = str(int(odd[::-1]) * 2)
    digits = even[::-1] + doubled
    total = sum(int(d) for d in digits)
    return (10 - total % 10) % 10 == int(check)


# ---- the real codes ----

def _codings(node, out: dict[str, set[str]]) -> None:
    if isinstance(node, dict):
        system, code = node.get("system"), node.get("code")
        if system in (SNOMED, LOINC) and isinstance(code, str):
            out[system].add(code)
        for value in node.values():
            _codings(value, out)
    elif isinstance(node, list):
        for value in node:
            _codings(value, out)


@pytest.fixture(scope="module")
def real_codes(tmp_path_factory) -> dict[str, list[str]]:
    """Every SNOMED CT and LOINC code of the 100-patient Synthea export, found by walking its JSON."""
    folder = copy_export(BUNDLES_100P, tmp_path_factory.mktemp("realdata"))
    found: dict[str, set[str]] = {SNOMED: set(), LOINC: set()}
    for path in folder.rglob("*.json"):
        _codings(json.loads(path.read_bytes()), found)
    return {system: sorted(codes) for system, codes in found.items()}


def corruptions(code: str) -> list[str]:
    """Every code one digit away from ``code`` (each digit replaced by each other digit)."""
    out = []
    for i, ch in enumerate(code):
        if ch.isdigit():
            out += [code[:i] + d + code[i + 1:] for d in "0123456789" if d != ch]
    return out


@needs_realdata
def test_the_export_holds_enough_codes_to_mean_something(real_codes):
    assert len(real_codes[SNOMED]) >= 100 and len(real_codes[LOINC]) >= 90


@needs_realdata
def test_every_real_snomed_code_is_valid_and_every_single_digit_change_is_not(real_codes):
    for code in real_codes[SNOMED]:
        assert reference_sctid(code), code
        assert is_valid_sctid(code), code
        for wrong in corruptions(code):
            assert not reference_sctid(wrong), wrong
            assert not is_valid_sctid(wrong), wrong


@needs_realdata
def test_every_real_loinc_code_is_valid_and_every_single_digit_change_is_not(real_codes):
    for code in real_codes[LOINC]:
        assert reference_loinc(code), code
        assert is_valid_loinc(code), code
        for wrong in corruptions(code):
            assert not reference_loinc(wrong), wrong
            assert not is_valid_loinc(wrong), wrong


SHAPES = {
    SNOMED: ["12345", "0044054006", "4405400.6", "44054006 ", "1" * 19, "", "abc", "44054006x"],
    LOINC: ["718", "7187", "718-", "-7", "12345678-9", "718-77", "718 - 7", "LA6576-8"],
}


def test_the_implementations_agree_on_malformed_codes():
    for code in SHAPES[SNOMED]:
        assert is_valid_sctid(code) is reference_sctid(code) is False, code
    for code in SHAPES[LOINC]:
        assert is_valid_loinc(code) is reference_loinc(code) is False, code


@needs_realdata
def test_the_gx_expectations_flag_exactly_the_corrupted_rows(real_codes, tmp_path):
    """The GX rules (validation/rules.yaml) on a table of the real codes with some corrupted:
    the rows they flag are the rows the reference implementation rejects, nothing else."""
    rows = []
    for system, check in ((SNOMED, reference_sctid), (LOINC, reference_loinc)):
        for n, code in enumerate(real_codes[system]):
            rows.append((system, code))
            if n % 3 == 0:
                rows.append((system, corruptions(code)[n % len(corruptions(code))]))
    systems, codes = zip(*rows)
    index = [n * 10 + 7 for n in range(len(rows))]  # labels, not positions, come back
    frame = canonical_frame("observations", {"patient_id": "P1", "system": systems, "code": codes, "value": 1.0},
                            index=index)
    conditions = canonical_frame("conditions", {"patient_id": "P1", "system": systems, "code": codes}, index=index)
    report = validate_tables({"patients": canonical_frame("patients", {"patient_id": ["P1"]}), "observations": frame,
                              "conditions": conditions}, load_rules(), docs_dir=tmp_path / "docs", pseudonymizer=KEY)
    for table in ("observations", "conditions"):
        snomed = report.result(table, "snomed_format")
        loinc = report.result(table, "loinc_format") if table == "observations" else None
        expected = [label for label, (system, code) in zip(frame.index, rows)
                    if system == SNOMED and not reference_sctid(code)]
        assert snomed.rows == expected and snomed.element_count == (frame["system"] == SNOMED).sum()
        assert not snomed.success and snomed.severity == "warning"
        if loinc is not None:
            expected = [label for label, (system, code) in zip(frame.index, rows)
                        if system == LOINC and not reference_loinc(code)]
            assert loinc.rows == expected and loinc.element_count == (frame["system"] == LOINC).sum()
    pages = "".join(p.read_text() for p in (tmp_path / "docs").rglob("*.html")).lower()
    assert "valid_snomed_ct_id" in pages and "valid_loinc_code" in pages  # Data Docs render them


# ---- regex formats of the other systems ----

# (system column value, table, code column, rule, valid codes, invalid codes)
FORMATS = [
    (ICD10CM, "conditions", "code", "icd10cm_format",
     ["E11.9", "E119", "G35.D", "G35", "S52.521A", "S52521A", "C4A.0", "U07.1", "Z79.4", "O09.A0"],
     ["E11.", "E1.19", "e11.9", "E11.99999", "11.9", "E", "E11-9", "44054006"]),
    (ICD10, "conditions", "code", "icd10_format",
     ["E11.9", "E119", "I10", "U07.1", "E11.90"],
     ["E11.", "G35.D", "S52.521A", "e11.9", "E1"]),
    (ATC, "medication_exposures", "drug_code", "atc_format",
     ["A10BA02", "C10AA01", "N02BE01"], ["A10BA", "metformin", "a10ba02", "X10BA02", "A10BA2"]),
    (RXNORM, "medication_exposures", "drug_code", "rxnorm_format",
     ["860975", "6809", "1049621"], ["0860975", "86 0975", "A10BA02", "860975.0"]),
    (NDC, "medication_exposures", "drug_code", "ndc_format",
     ["0002-3227-30", "50090-2875-0", "00904-6300-61", "0781-5180-01", "50580-600-02", "00002322730"],
     ["0002-3227", "2-3227-30", "0002322730X"]),
]


@pytest.mark.parametrize("system, table, column, rule, valid, invalid", FORMATS, ids=[f[3] for f in FORMATS])
def test_code_formats_per_system(system, table, column, rule, valid, invalid):
    system_column = "system" if table == "conditions" else "drug_system"
    codes = valid + invalid
    # the same invalid codes under a local system are nobody's business
    frame = canonical_frame(table, {"patient_id": "P1", system_column: [system] * len(codes) + ["urn:local"] * len(invalid),
                                    column: codes + invalid})
    if table == "medication_exposures":
        frame["outcome"] = "unknown"
    report = validate_tables({"patients": canonical_frame("patients", {"patient_id": ["P1"]}), table: frame},
                             load_rules(), pseudonymizer=KEY)
    result = report.result(table, rule)
    assert result.element_count == len(codes)
    assert sorted(result.rows) == list(range(len(valid), len(codes)))
    flagged = {(r.rule, tuple(r.rows)) for r in report.warnings}
    assert flagged == {(rule, tuple(range(len(valid), len(codes))))}


def test_a_where_may_name_a_system_by_its_short_name_or_oid(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(textwrap.dedent("""\
        tables:
          conditions:
            - {id: a, expectation: ExpectColumnValuesToBeValidSnomedCtId, column: code, where: {system: sct}, severity: warning}
            - {id: b, expectation: ExpectColumnValuesToBeValidSnomedCtId, column: code,
               where: {system: "urn:oid:2.16.840.1.113883.6.96"}, severity: warning}
        """))
    rules = load_rules(path)
    assert [r.where for r in rules.tables["conditions"]] == [{"system": SNOMED}, {"system": SNOMED}]
