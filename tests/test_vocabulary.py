"""Closed vocabularies at ingest: code formats, hashed descriptions, displays by attestation, sealed
staging text, UCUM units without annotations, DICOM defined terms and the store's site."""

from __future__ import annotations

import re

from datetime import date

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from medmeta.errors import Rejected
from medmeta.dicom.defined_terms import BODY_PARTS, MODALITIES, defined_term
from medmeta.ingest.config import IngestConfig
from medmeta.ingest.process import site_for, stored_site
from medmeta.ingest.units_step import stored_unit
from medmeta.pseudonyms import Pseudonymizer
from medmeta.records.canonical import Canonicalizer
from medmeta.records.displays import keep_attested_displays
from medmeta.records.raw import RawRecords
from medmeta.records.sealed import Sealer
from medmeta.records.masking import character_classes, masked as describe_value
from medmeta.records.vocabulary import code_fits, system_fits
from medmeta.terminology.systems import ATC, ICD10CM, LOINC, NDC, RXNORM, SNOMED
from tests.realdata import REALDATA, needs_realdata

PSEUDO = Pseudonymizer("vocabulary-test-key-0123456789")


@pytest.mark.parametrize(("system", "good", "bad"), [
    (SNOMED, ["38341003", "44054006", "73211009"], ["38341004", "Smith, John", "038341003", "3834100 3"]),
    (LOINC, ["2345-7", "718-7", "15074-8"], ["2345-8", "2345", "Smith-1"]),
    (ICD10CM, ["E11.9", "E119", "G35.D", "S52.521A", "C4A.0"], ["Smith, John", "e11.9", "E11.9 x", "11.9"]),
    (RXNORM, ["860975", "1"], ["0", "86 0975", "RX860975"]),
    (ATC, ["A10BA02", "A10", "A", "C10AA"], ["A10BA0", "Smith", "a10ba02"]),
    (NDC, ["0069-2587-10", "00692587010"], ["69-2587-10", "Smith"]),
    ("urn:hospital:local-codes", ["DX-001", "abc.12", "A:B/C"], ["Smith, John", "Smith John", "x" * 41, "", "Jöhn"]),
])
def test_a_code_fits_its_system_or_is_refused(system, good, bad):
    assert all(code_fits(system, code) for code in good)
    assert not any(code_fits(system, code) for code in bad)


def test_a_code_system_is_known_or_a_uri_without_spaces():
    assert system_fits(SNOMED) and system_fits("urn:oid:1.2.3") and system_fits("1.2.840.10008")
    assert system_fits("https://hospital.example/fhir/CodeSystem/dx")
    assert not system_fits("Smith, John") and not system_fits("http://x.org/Smith John") and not system_fits(None)


def test_a_refused_value_is_described_by_a_keyed_hash_its_length_and_classes():
    text = describe_value("Smith, John", PSEUDO)
    assert text.startswith("value:") and ", 11 chars, letters+space+punct" in text
    assert "Smith" not in text and "John" not in text
    assert describe_value("Smith, John", PSEUDO) == text, "the same value, the same hash: findable"
    assert describe_value("Smith, John", Pseudonymizer("another-key-entirely-0123456789")) != text
    assert character_classes("Jöhn 12\x07") == "letters+non-ascii letters+digits+space+other"


@given(st.text(min_size=1, max_size=60))
def test_no_description_quotes_its_value(value):
    described = describe_value(value, PSEUDO)
    # exactly "value:<16 hex>, <n> chars, <classes>": nothing of the value but its length and the
    # names of its character classes (a value such as "val" or "letters" is in those fixed words)
    match = re.fullmatch(r"value:[0-9a-f]{16}, (\d+) chars, ([a-z+ -]+)", described)
    assert match, described
    assert int(match.group(1)) == len(value) and match.group(2) == character_classes(value)


@given(st.text(max_size=15), st.sampled_from([" ", ","]), st.text(max_size=15))
def test_no_local_code_holds_a_space_or_a_comma(before, separator, after):
    assert not code_fits("urn:local", before + separator + after)


def _conditions(rows):
    return pd.DataFrame(rows, columns=["patient_id", "system", "code", "display"])


def test_a_display_is_kept_when_enough_patients_attest_it():
    label = "Hypertension (disorder)"
    frame = _conditions([(f"P{i}", SNOMED, "38341003", label) for i in range(3)])
    kept, withheld = keep_attested_displays(frame, "conditions", 3)
    assert kept["display"].tolist() == [label] * 3 and withheld == {}


def test_a_display_one_patient_carries_is_withheld_even_on_many_rows():
    name = "Smith, John"
    frame = _conditions([("P1", SNOMED, "73211009", name)] * 5 + [("P2", SNOMED, "73211009", "Diabetes (disorder)"),
                                                                 ("P3", SNOMED, "73211009", "Diabetes (disorder)")])
    kept, withheld = keep_attested_displays(frame, "conditions", 3)
    assert kept["display"].isna().all() and withheld == {"conditions.display": 7}
    assert kept["code"].tolist() == ["73211009"] * 7, "the code stays"


def test_a_display_needs_its_own_code_and_system_attested():
    rows = [(f"P{i}", SNOMED, "38341003", "Hypertension (disorder)") for i in range(3)]
    rows.append(("P9", SNOMED, "44054006", "Hypertension (disorder)"))  # the same words under another code
    kept, _ = keep_attested_displays(_conditions(rows), "conditions", 3)
    assert kept["display"].isna().tolist() == [False, False, False, True]


def test_staged_text_is_sealed_deterministically_and_opens_only_with_its_key():
    sealer = Sealer(PSEUDO)
    sealed = sealer.seal("Smith, John")
    assert "Smith" not in sealed and sealed == Sealer(PSEUDO).seal("Smith, John")
    assert sealer.open(sealed) == "Smith, John" and sealer.seal(None) is None
    assert Sealer(Pseudonymizer("another-key-entirely-0123456789")).open(sealed) is None
    assert sealer.open("mg/dL") == "mg/dL", "a part written before sealing holds plain text"


def test_the_canonicalizer_rejects_a_name_in_a_code_and_seals_displays_and_units():
    canon = Canonicalizer(PSEUDO, date(2026, 1, 1), date(2026, 6, 1))
    raw = RawRecords(site="s")
    base = {"mrn": "M1", "onset_date": None, "location": "row 2"}
    raw.add("conditions", {**base, "system": ICD10CM, "code": "Smith, John", "display": None})
    raw.add("conditions", {**base, "system": ICD10CM, "code": "E11.9", "display": "Type 2 diabetes"})
    raw.add("observations", {**base, "system": LOINC, "code": "2345-7", "display": None, "value": 5.0,
                             "unit": "Smith John", "comparator": None, "effective_date": None, "location": "row 3"})
    staged = canon(raw, "sha")
    assert [e.code for e in staged.rejects] == ["invalid_code"] and staged.rejects[0].location == "row 2"
    assert "Smith" not in staged.rejects[0].reason and "value:" in staged.rejects[0].reason
    conditions = staged.tables["conditions"].to_pylist()
    assert [c["code"] for c in conditions] == ["E11.9"] and conditions[0]["display"].startswith("sealed:")
    assert staged.tables["observations"].to_pylist()[0]["unit"].startswith("sealed:")


@pytest.mark.parametrize(("unit", "canonical", "stored"), [
    ("mmol/L", "mmol/L", "mmol/L"), ("{cells}/uL", None, "/uL"), ("10*3/uL{SmithJohn}", None, "10*3/uL"),
    ("{score}", None, "1"), ("{beats}/min", "{beats}/min", "{beats}/min"), (None, None, None),
])
def test_a_stored_unit_holds_no_annotation_but_its_canonical_one(unit, canonical, stored):
    assert stored_unit(unit, canonical) == stored


def test_dicom_enumerated_values_are_defined_terms_or_nothing():
    assert defined_term("CT ", MODALITIES) == "CT" and defined_term("MR", MODALITIES) == "MR"
    assert defined_term("SMITH", MODALITIES) is None and defined_term(None, MODALITIES) is None
    assert defined_term("CHEST", BODY_PARTS) == "CHEST" and defined_term("HEAD", BODY_PARTS) == "HEAD"
    assert defined_term("JOHN SMITH", BODY_PARTS) is None and defined_term("WHOLE BODY", BODY_PARTS) is None


def test_the_store_site_is_a_configured_name_or_a_keyed_token_never_a_folder_name():
    config = IngestConfig()
    operator = frozenset({"default", "site_a", "site_c"})

    def stored(path: str, cfg: IngestConfig = config) -> str:
        site = site_for(path, cfg)
        return stored_site(site, site, operator, PSEUDO)

    assert stored("site_a/conditions.json") == "site_a"
    token = stored("Smith_John_export/bundle.json")
    assert token.startswith("folder-") and "Smith" not in token
    assert stored("Smith_John_export.zip/bundle.json") == token, "an archive is its folder"
    assert stored("bundle.json") == "default"
    assert site_for("Smith_John_export/b.json", IngestConfig(site="hospital_a")) == "hospital_a"
    undecodable = "Sm\udcffith".encode("utf-8", "surrogateescape").decode("utf-8", "surrogateescape")
    assert stored(f"{undecodable}/b.json").startswith("folder-"), "a non-UTF-8 folder name"


def test_a_vocabulary_table_is_held_to_its_own_column_types():
    from medmeta.records.vocabulary import vocabulary_code_fits, vocabulary_system_fits
    from medmeta.terminology.systems import UCUM

    assert code_fits(UCUM, "mg/dL") and code_fits(UCUM, "[degF]") and code_fits(UCUM, "10*3/uL")
    assert not code_fits(UCUM, "Smith John") and vocabulary_code_fits(UCUM, "{mitoses}/[10 HPF]")
    assert vocabulary_system_fits("Condition Type") and not system_fits("Condition Type")
    assert vocabulary_code_fits("Ethnicity", "Not Hispanic") and not vocabulary_code_fits(SNOMED, "38341004")
    assert not vocabulary_code_fits("Ethnicity", "x" * 51)


@needs_realdata
@pytest.mark.slow
def test_every_code_of_the_shared_real_exports_fits_its_vocabulary():
    """No real export loses a row to the vocabulary check: Synthea bundles, bulk NDJSON, OMOP CDM, Epic-like."""
    import gzip
    import zipfile

    from medmeta.landing.sniff import sniff
    from medmeta.records.fhir import parse_fhir_json, parse_fhir_ndjson
    from medmeta.records.tabular import parse_tabular
    canon = Canonicalizer(PSEUDO, date(2026, 1, 1), date(2026, 6, 1))
    rows, refused = 0, []

    def read(name: str, data: bytes) -> None:
        nonlocal rows
        if name.endswith(".gz"):
            data, name = gzip.decompress(data), name[:-3]
        if not name.endswith((".json", ".ndjson", ".csv")):
            return
        try:
            kind = sniff(data, name)
        except Rejected:  # not a record file (Finder metadata ...): the landing tests' business
            return
        parse = {"json": lambda: parse_fhir_json(data, "s"), "ndjson": lambda: parse_fhir_ndjson(data, "s"),
                 "csv": lambda: parse_tabular(data, "csv", [], "s")}.get(kind)
        if parse is None:
            return
        staged = canon(parse(), "x")
        rows += staged.row_count
        refused.extend(e.reason for e in staged.rejects if e.code == "invalid_code")

    for path in sorted(REALDATA.rglob("*")):
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as archive:
                for name in archive.namelist():
                    if not name.endswith("/"):
                        read(name, archive.read(name))
        elif path.is_file():
            read(path.name, path.read_bytes())
    assert rows > 30_000 and refused == []
