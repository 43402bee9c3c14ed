"""The unit of loss is the smallest readable unit (issue 12): an NDJSON line, a Bundle entry, a CSV row.

Each bad line (nested 100,000 deep, a 5,000-digit integer, a value that is not finite, truncated,
not UTF-8) is rejected alone, with its position and its own reason, and every good line of its file
is read and stored; never ``internal_error``. A U+2028 / U+2029 / U+0085 inside a JSON string splits
nothing. Each case runs through the reader and through the ingest worker and consolidation (the
store), counted with the test's own json, before and after the first 8 KiB that sniffing reads.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from medmeta.errors import Rejected
from medmeta.ingest.consolidate import consolidate
from medmeta.ingest.process import Worker
from medmeta.ingest.setup import IngestSetup
from medmeta.landing.sniff import PREFIX_BYTES, sniff
from medmeta.landing.walk import discover
from medmeta.records.fhir import parse_fhir_json, parse_fhir_ndjson
from medmeta.records.site_mappings import install_default_sites, load_site_mappings
from medmeta.records.tabular import parse_tabular
from tests.bad_lines import BAD_LINES, LINE_BREAKS_IN_STRINGS, condition, observation, patient_line

EARLY = 3  # the bad line's number within the sniffed prefix
LATE_GOOD_LINES = 60  # enough good lines before it to push it past the first 8 KiB


def _ndjson_with(bad: bytes, at: int, total: int = LATE_GOOD_LINES + 4) -> tuple[bytes, list[str]]:
    """A Patient, Observations and Conditions, with ``bad`` as line ``at``; and the good lines."""
    good = [patient_line(0)] + [observation(i) if i % 3 else condition(i) for i in range(1, total)]
    lines = [line.encode() for line in good]
    lines.insert(at - 1, bad)
    return b"\n".join(lines) + b"\n", good


def _read_counts(good: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in good:
        kind = json.loads(line)["resourceType"]
        counts[kind] = counts.get(kind, 0) + 1
    return counts


@pytest.fixture(params=["early", "late"])
def position(request) -> int:
    return EARLY if request.param == "early" else LATE_GOOD_LINES


@pytest.mark.parametrize("name", list(BAD_LINES))
def test_a_bad_ndjson_line_is_rejected_alone_with_its_reason(name, position):
    bad, reason = BAD_LINES[name]
    data, good = _ndjson_with(bad, position)
    if position == LATE_GOOD_LINES:
        assert data.index(bad) > PREFIX_BYTES
    assert sniff(data, "export/Observation.ndjson") == "ndjson"
    records = parse_fhir_ndjson(data, "s")
    assert [(e.code, e.location) for e in records.rejects] == [(reason, f"line {position}")]
    assert records.read == _read_counts(good)
    assert "Zzyzx" not in " ".join(e.message for e in records.rejects)


@pytest.mark.parametrize("char", list(LINE_BREAKS_IN_STRINGS))
def test_unicode_line_separators_inside_strings_split_nothing(char, position):
    line = observation(999, unit=f"mg{LINE_BREAKS_IN_STRINGS[char]}dL").encode()
    data, good = _ndjson_with(line, position)
    assert sniff(data, "Observation.ndjson") == "ndjson" and sniff(data, "export.json") == "ndjson"
    records = parse_fhir_ndjson(data, "s")
    assert records.rejects == []
    assert records.read == _read_counts(good + [line.decode()])


@pytest.mark.parametrize("name, reason", [("deep object", "json_too_deep"), ("deep array", "json_too_deep"),
                                          ("5000-digit integer", "number_too_large")])
def test_a_whole_json_file_that_can_not_be_read_is_one_unit_with_its_reason(name, reason):
    with pytest.raises(Rejected) as refused:
        parse_fhir_json(BAD_LINES[name][0])
    assert refused.value.code == reason


def test_a_bad_bundle_entry_is_rejected_alone():
    entries = [patient_line(0), observation(1), observation(2, "NaN"), observation(3, "1" + "0" * 400),
               observation(4, "1e999"), condition(5), observation(6)]
    bundle = ('{"resourceType": "Bundle", "type": "collection", "entry": ['
              + ", ".join('{"resource": %s}' % e for e in entries) + "]}").encode()
    records = parse_fhir_json(bundle, "s")
    assert [(e.code, e.location) for e in records.rejects] == [
        ("not_finite", "entry 3"), ("number_too_large", "entry 4"), ("not_finite", "entry 5")]
    assert records.read == {"Patient": 1, "Observation": 2, "Condition": 1}


# ---------------------------------------------------------------------------------------------
# CSV rows


@pytest.fixture(scope="module")
def mappings(tmp_path_factory):
    sites = tmp_path_factory.mktemp("sites")
    install_default_sites(sites)
    return load_site_mappings(sites)


LABS_HEADER = "MRN,LAB_DATE,GLUCOSE_MG_DL,HGB_G_DL"
BAD_ROWS = {
    "more fields than the header": ("A1,2024-01-02,90,13.5,Zzyzx", "malformed_csv_row", ""),
    "a NUL character": ("A1,2024-01-02,9\x000,", "non_numeric_value", " column GLUCOSE_MG_DL"),
    "a field over the csv module's limit": ("A1,2024-01-02,90,13.5," + "Zzyzx " * 30_000, "malformed_csv_row", ""),
    "inf": ("A1,2024-01-02,inf,", "not_finite", " column GLUCOSE_MG_DL"),
    "1e999": ("A1,2024-01-02,1e999,", "not_finite", " column GLUCOSE_MG_DL"),
    "NaN": ("A1,2024-01-02,NaN,", "not_finite", " column GLUCOSE_MG_DL"),
    "a 5000-digit number": ("A1,2024-01-02," + "9" * 5000 + ",", "not_finite", " column GLUCOSE_MG_DL"),
}


def _labs_with(bad_row: str, at: int, good_rows: int = 400) -> tuple[bytes, int]:
    rows = [f"A{i},2024-01-{1 + i % 28:02d},{80 + i % 50},{12 + i % 5}.5" for i in range(good_rows)]  # each a distinct fact
    rows.insert(at - 2, bad_row)  # row numbers count the header as row 1
    return ("\n".join([LABS_HEADER, *rows]) + "\n").encode(), 2 * good_rows


@pytest.mark.parametrize("name", list(BAD_ROWS))
def test_a_bad_csv_row_is_rejected_alone_with_its_reason(name, position, mappings):
    row, reason, column = BAD_ROWS[name]
    data, cells = _labs_with(row, position * 5)
    records = parse_tabular(data, "csv", mappings)
    assert [(e.code, e.location) for e in records.rejects] == [(reason, f"row {position * 5}{column}")]
    assert len(records.rows["observations"]) == cells
    assert "Zzyzx" not in repr(records.rows)


def test_csv_rows_keep_their_line_numbers_across_blank_lines_and_a_trailing_delimiter(mappings):
    data = (LABS_HEADER + "\n" + "A1,2024-01-02,90,13.5,\n\n" + "A2,2024-01-02,x,13.5\n").encode()
    records = parse_tabular(data, "csv", mappings)
    assert [(e.code, e.location) for e in records.rejects] == [("non_numeric_value", "row 4 column GLUCOSE_MG_DL")]
    assert sorted(r["location"] for r in records.rows["observations"]) == [
        "row 2 column GLUCOSE_MG_DL", "row 2 column HGB_G_DL", "row 4 column HGB_G_DL"]


# ---------------------------------------------------------------------------------------------
# Through the ingest worker and consolidation: the good lines are stored, the bad one quarantined


def _ingest(landing: Path, home: Path, monkeypatch) -> tuple[list, dict]:
    monkeypatch.setenv("MEDMETA_PSEUDONYM_KEY", "medmeta-test-pseudonym-key-0123456789")
    setup = IngestSetup.create(str(landing), home=str(home), workers=1)
    worker = Worker(setup.worker_context)
    outcomes = [worker.process(item)[0] for item in discover(setup.source, setup.config)]
    consolidate(setup.home, [o.sha256 for o in outcomes if o.status == "ingested"], setup.pseudonymizer,
                setup.config.image_size)
    store = {name: pq.read_table(setup.home.store / f"{name}.parquet").to_pylist()
             for name in ("patients", "observations", "conditions", "record_quarantine")}
    return outcomes, store


@pytest.mark.parametrize("name", list(BAD_LINES))
def test_the_ingest_stores_every_good_line_and_quarantines_the_bad_one(name, position, tmp_path, monkeypatch):
    bad, reason = BAD_LINES[name]
    data, good = _ndjson_with(bad, position)
    (tmp_path / "land" / "site_b").mkdir(parents=True)
    (tmp_path / "land" / "site_b" / "export.ndjson").write_bytes(data)
    outcomes, store = _ingest(tmp_path / "land", tmp_path / "home", monkeypatch)
    [outcome] = outcomes
    assert (outcome.status, outcome.reason, outcome.rows_rejected) == ("ingested", None, 1)
    counts = _read_counts(good)
    assert (len(store["patients"]), len(store["observations"]), len(store["conditions"])) == (
        counts["Patient"], counts["Observation"], counts["Condition"])
    assert [(q["location"], q["reason"].split(":")[0]) for q in store["record_quarantine"]] == [
        (f"line {position}", reason)]


@pytest.mark.parametrize("char", list(LINE_BREAKS_IN_STRINGS))
def test_the_ingest_reads_every_line_around_a_unicode_line_separator(char, position, tmp_path, monkeypatch):
    line = observation(999, unit=f"mg{LINE_BREAKS_IN_STRINGS[char]}dL").encode()
    data, good = _ndjson_with(line, position)
    (tmp_path / "land").mkdir()
    (tmp_path / "land" / "export.json").write_bytes(data)  # content, not the name, makes it NDJSON
    outcomes, store = _ingest(tmp_path / "land", tmp_path / "home", monkeypatch)
    assert [(o.status, o.kind, o.rows_rejected) for o in outcomes] == [("ingested", "ndjson", 0)]
    assert len(store["observations"]) == _read_counts(good)["Observation"]
    assert [(q["location"], q["reason"].split(":")[0]) for q in store["record_quarantine"]] == [
        ("line " + str(position), "unknown_unit")], "only its made-up unit is refused, at consolidation"


@pytest.mark.parametrize("name, reason", [("deep object", "json_too_deep"), ("5000-digit integer", "number_too_large")])
def test_a_whole_json_file_that_can_not_be_read_is_quarantined_with_its_reason(name, reason, tmp_path, monkeypatch):
    (tmp_path / "land").mkdir()
    (tmp_path / "land" / "resource.json").write_bytes(BAD_LINES[name][0])
    outcomes, _ = _ingest(tmp_path / "land", tmp_path / "home", monkeypatch)
    assert [(o.status, o.reason.split(":")[0]) for o in outcomes] == [("quarantined", reason)]
    [reason_file] = (tmp_path / "home" / "quarantine").glob("*/reason.json")
    assert json.loads(reason_file.read_text())["code"] == reason


def test_a_value_that_overflows_in_its_canonical_unit_is_quarantined_not_stored(tmp_path, monkeypatch):
    """1e308 mg/dL of creatinine is finite, but not in umol/L: FHIR and CSV alike."""
    (tmp_path / "land" / "site_b").mkdir(parents=True)
    creatinine = '{"system": "http://loinc.org", "code": "2160-0"}'
    lines = [patient_line(0), observation(1, "1e308", "mg/dL").replace(json.dumps(
        {"system": "http://loinc.org", "code": "2345-7"}), creatinine), observation(2)]
    (tmp_path / "land" / "site_b" / "export.ndjson").write_text("\n".join(lines) + "\n")
    (tmp_path / "land" / "labs.csv").write_text("MRN,LAB_DATE,CREATININE_MG_DL\nA1,2024-01-02,1e308\nA1,2024-01-03,1.1\n")
    outcomes, store = _ingest(tmp_path / "land", tmp_path / "home", monkeypatch)
    assert {o.status for o in outcomes} == {"ingested"}
    assert all(abs(o["value"]) < 1e300 for o in store["observations"]) and len(store["observations"]) == 2
    assert sorted((q["location"], q["reason"].split(":")[0]) for q in store["record_quarantine"]) == [
        ("line 2", "not_finite"), ("row 2 column CREATININE_MG_DL", "not_finite")]


@pytest.mark.parametrize("name", ["a NUL character", "more fields than the header", "1e999",
                                  "a field over the csv module's limit"])
def test_the_ingest_stores_every_good_csv_row_and_quarantines_the_bad_one(name, tmp_path, monkeypatch):
    row, reason, column = BAD_ROWS[name]
    at = 600  # past the sniffed prefix: a NUL within it makes the file binary (sniff.py)
    data, cells = _labs_with(row, at, good_rows=800)
    (tmp_path / "land").mkdir()
    (tmp_path / "land" / "labs.csv").write_bytes(data)
    outcomes, store = _ingest(tmp_path / "land", tmp_path / "home", monkeypatch)
    assert [(o.status, o.rows_rejected) for o in outcomes] == [("ingested", 1)]
    assert len(store["observations"]) == cells
    assert [(q["location"], q["reason"].split(":")[0]) for q in store["record_quarantine"]] == [
        (f"row {at}{column}", reason)]


# ---------------------------------------------------------------------------------------------
# OMOP CDM rows: ids read exactly, never through a float


PERSON_HEADER = ("person_id,gender_concept_id,year_of_birth,month_of_birth,day_of_birth,birth_datetime,"
                 "race_concept_id,ethnicity_concept_id\n")
CONCEPT_HEADER = ("concept_id,concept_name,domain_id,vocabulary_id,concept_class_id,standard_concept,concept_code,"
                  "valid_start_date,valid_end_date,invalid_reason\n")


@pytest.mark.parametrize("person_id, reason", [("1" * 30, "number_too_large"), ("9" * 5000, "number_too_large"),
                                               ("1e999", "not_finite"), ("12.5", "invalid_record")])
def test_an_omop_row_with_an_unreadable_id_is_rejected_alone(person_id, reason, mappings):
    data = (PERSON_HEADER + "7,8507,1970,1,1,,0,0\n" + f"{person_id},8532,1980,,,,0,0\n"
            + "12345678901234567,8532,1990,,,,0,0\n").encode()
    records = parse_tabular(data, "csv", mappings, "s")
    assert [(e.code, e.location) for e in records.rejects] == [(reason, "row 3")]
    assert [row["mrn"] for row in records.rows["patients"]] == ["7", "12345678901234567"], "ids exact, not floats"


@pytest.mark.parametrize("birth", ["99999999999,1,1", "1970,99999999999,1", "1970,1,-99999999999"])
def test_an_omop_birth_date_part_beyond_a_c_int_is_rejected_alone(birth, mappings):
    """Found by bench/fuzz_readers.py: ``date()`` raised OverflowError."""
    data = (PERSON_HEADER + "7,8507,1970,1,1,,0,0\n" + f"8,8532,{birth},,0,0\n").encode()
    records = parse_tabular(data, "csv", mappings, "s")
    assert [(e.code, e.location) for e in records.rejects] == [("invalid_record", "row 3")]
    assert [row["mrn"] for row in records.rows["patients"]] == ["7"]


def test_omop_concept_ids_beyond_15_digits_are_rejected_not_wrapped(mappings):
    row = "{},Diabetes,Condition,SNOMED,Clinical Finding,S,{},1970-01-01,2099-12-31,\n"
    data = (CONCEPT_HEADER + row.format("1" * 30, "1") + row.format("18446744073709551615", "2")
            + row.format("201826", "44054006")).encode()
    records = parse_tabular(data, "csv", mappings, "s")
    assert [(e.code, e.location) for e in records.rejects] == [("invalid_record", "row 2"), ("invalid_record", "row 3")]
    assert [c["concept_id"] for c in records.concepts] == [201826]
