"""Property (issue 12): in a file with one bad line or row anywhere, every good one is read.

Generated FHIR NDJSON files of valid Patient / Condition / Observation lines, and site A lab CSVs,
each with one bad unit inserted at a generated position: nested too deep, an integer too large,
a value that is not finite, truncated, not UTF-8 (FHIR); more fields than the header, a value that is
not finite, a field the csv module refuses (CSV). The good ones are counted with the test's own json
and csv code; exactly one is rejected, where it was put.
"""

from __future__ import annotations

import csv
import io
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medmeta.landing.sniff import sniff
from medmeta.records.fhir import parse_fhir_ndjson
from medmeta.records.site_mappings import install_default_sites, load_site_mappings
from medmeta.records.tabular import parse_tabular
from tests.bad_lines import deep_object_line, truncated

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ids = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)  # any Unicode text: U+2028 included
dates = st.dates().map(lambda d: d.isoformat())
finite = st.floats(allow_nan=False, allow_infinity=False)
codings = st.fixed_dictionaries({"system": st.sampled_from(["http://loinc.org", "http://snomed.info/sct"]),
                                 "code": ids}, optional={"display": text})
subjects = ids.map(lambda i: {"reference": f"Patient/{i}"})


def _resource(kind: str, **fields) -> dict:
    return {"resourceType": kind, **fields}


patients = st.builds(lambda i, mrn, birth: _resource("Patient", id=i, birthDate=birth,
                                                      identifier=[{"system": "urn:test", "value": mrn}]),
                     ids, text.filter(str.strip), dates)
conditions = st.builds(lambda i, code, subject, onset: _resource("Condition", id=i, code={"coding": [code]},
                                                                  subject=subject, onsetDateTime=onset),
                       ids, codings, subjects, dates)
values = st.one_of(st.builds(lambda v, u: {"valueQuantity": {"value": v, "unit": u}}, finite, text),
                   st.integers(-2**31, 2**31 - 1).map(lambda v: {"valueInteger": v}),
                   st.booleans().map(lambda v: {"valueBoolean": v}))
observations = st.builds(lambda i, code, subject, value, when: _resource(
    "Observation", id=i, status="final", code={"coding": [code]}, subject=subject, effectiveDateTime=when, **value),
    ids, codings, subjects, values, dates)
good_lines = st.lists(st.one_of(patients, conditions, observations), min_size=1, max_size=40).map(
    lambda resources: [json.dumps(r, ensure_ascii=False) for r in resources])


@st.composite
def bad_lines(draw, good: list[str]) -> bytes:
    """One line that can not be read, of a kind the draw picks."""
    kind = draw(st.sampled_from(["deep", "huge integer", "not finite", "truncated", "bad UTF-8"]))
    if kind == "deep":
        return deep_object_line(draw(st.integers(1025, 50_000))).encode()
    base = draw(st.sampled_from(good))
    if kind == "huge integer":
        return (base[:-1] + ', "extension": [{"valueInteger": ' + "7" * draw(st.integers(4301, 9000)) + "}]}").encode()
    if kind == "not finite":
        literal = draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-2e400"]))
        return ('{"resourceType": "Observation", "status": "final", "subject": {"reference": "Patient/x"}, '
                '"code": {"coding": [{"system": "http://loinc.org", "code": "1-8"}]}, '
                '"valueQuantity": {"value": %s}}' % literal).encode()
    if kind == "truncated":
        return truncated(base, draw(st.integers(1, len(base) - 1))).encode()
    cut = draw(st.integers(1, len(base) - 1))
    encoded = base.encode()
    return encoded[:cut] + draw(st.sampled_from([b"\xff", b"\xc3(", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"])) \
        + encoded[cut:]


@SETTINGS
@given(data=st.data())
def test_every_good_fhir_line_is_read_around_one_bad_line(data):
    good = data.draw(good_lines)
    bad = data.draw(bad_lines(good))
    at = data.draw(st.integers(1, len(good) + 1))
    lines = [line.encode() for line in good]
    lines.insert(at - 1, bad)
    file = b"\n".join(lines) + b"\n"
    assert sniff(file, "Observation.ndjson") == "ndjson"
    records = parse_fhir_ndjson(file, "s")
    expected: dict[str, int] = {}
    for line in good:
        kind = json.loads(line)["resourceType"]
        expected[kind] = expected.get(kind, 0) + 1
    assert records.read == expected
    assert [e.location for e in records.rejects] == [f"line {at}"]


# ---------------------------------------------------------------------------------------------
# CSV rows through a site mapping (medmeta/config/sites/site_a.yaml: wide labs)


@pytest.fixture(scope="module")
def mappings(tmp_path_factory):
    sites = tmp_path_factory.mktemp("sites")
    install_default_sites(sites)
    return load_site_mappings(sites)


mrns = st.text("ABCDEFGHIJ0123456789", min_size=1, max_size=10)
cells = st.one_of(st.just(""), finite.map(repr), st.integers(-10**6, 10**6).map(str))
lab_rows = st.lists(st.tuples(mrns, dates, cells, cells), min_size=1, max_size=60)


@st.composite
def bad_rows(draw) -> tuple[str, bool]:
    """(a bad row, whether its rejection names a column: the row is read, its value is not)."""
    kind = draw(st.sampled_from(["extra field", "not finite", "over-long field"]))
    mrn, date = draw(mrns), draw(dates)
    if kind == "extra field":
        return f"{mrn},{date},1,2,{draw(st.text('xyz ', min_size=1, max_size=5).filter(str.strip))}", False
    if kind == "not finite":
        return f"{mrn},{date},{draw(st.sampled_from(['inf', '-Infinity', 'nan', '1e999', '9' * 400]))},", True
    return f"{mrn},{date},1,2,{'x' * draw(st.integers(131_073, 200_000))}", False


def _own_count(rows: list[tuple]) -> int:
    """Lab values in the good rows, read back with the csv module: non-blank glucose and haemoglobin cells."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return sum(1 for row in csv.reader(io.StringIO(out.getvalue())) for cell in row[2:4] if cell.strip())


@SETTINGS
@given(data=st.data())
def test_every_good_csv_row_is_read_around_one_bad_row(data, mappings):
    rows = data.draw(lab_rows)
    bad, names_column = data.draw(bad_rows())
    at = data.draw(st.integers(2, len(rows) + 2))  # row numbers count the header as row 1
    lines = [",".join(row) for row in rows]
    lines.insert(at - 2, bad)
    file = ("MRN,LAB_DATE,GLUCOSE_MG_DL,HGB_G_DL\n" + "\n".join(lines) + "\n").encode()
    records = parse_tabular(file, "csv", mappings)
    assert len(records.rows.get("observations", [])) == _own_count(rows)
    assert [e.location for e in records.rejects] == [f"row {at}" + (" column GLUCOSE_MG_DL" if names_column else "")]
