"""Units: every observation value to one canonical code and UCUM unit (medmeta/records/units.py).

Real units come from third-party exports in ../shared/realdata (Synthea FHIR R4 bundles, an OMOP
CDM 5.4 MEASUREMENT table), copied into a temporary folder and counted here with plain json and
csv, never with medmeta's parsers. Expected values are computed by hand from the molar masses and
UCUM definitions written next to them.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import random
import shutil
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from medmeta.errors import UNKNOWN_UNIT, Rejected
from medmeta.records.units import Conversion, UnitConverter, default_units
from medmeta.terminology.systems import LOINC, SNOMED, UCUM

REPO = Path(__file__).resolve().parents[1]
UNITS_YAML = REPO / "medmeta" / "config" / "units.yaml"
REALDATA = Path(os.environ.get("MEDMETA_REALDATA") or REPO.parent / "shared" / "realdata")
SYNTHEA = "synthea_r4_transaction_bundles_100p.zip"
OMOP = "omop_cdm54_synthea27nj.zip"

# (LOINC code, unit) pairs of the real exports that are quarantined on purpose, with the reason.
# None today: every unit Synthea and the OMOP export write is UCUM ("mm[Hg]", "10*3/uL",
# "mL/min/{1.73_m2}") or a spelling units.yaml lists: "pH" (the pH scale, which UCUM writes [pH]:
# bare "pH" is the picohenry), "(score)" (a parenthesised annotation, UCUM's {score}) and, for the
# two PROMIS-10 scores only, "units" (Synthea's word for score points; "units" alone is not UCUM
# and stays unknown for any other analyte).
EXPECTED_REJECTIONS: dict[tuple[str, str], str] = {}


def realdata(name: str, tmp_path_factory) -> Path:
    source = REALDATA / name
    if not source.is_file():
        pytest.skip(f"{source} is absent: the shared real-data folder (see ../shared/realdata/README.md) "
                    "or MEDMETA_REALDATA is needed")
    copy = tmp_path_factory.mktemp("realdata") / name
    shutil.copyfile(source, copy)
    return copy


def quantity_unit(quantity: dict) -> str | None:
    """The unit of a FHIR Quantity as an ingest reads it: the UCUM code, else the display unit."""
    if quantity.get("system") == UCUM and quantity.get("code"):
        return quantity["code"]
    return quantity.get("unit") or quantity.get("code")


@pytest.fixture(scope="module")
def synthea_values(tmp_path_factory) -> list[tuple[str, float, str | None]]:
    """(LOINC code, value, unit) of every numeric Observation and component, in file order."""
    archive = realdata(SYNTHEA, tmp_path_factory)
    values = []
    with zipfile.ZipFile(archive) as bundles:
        for name in sorted(n for n in bundles.namelist() if n.endswith(".json")):
            for entry in json.loads(bundles.read(name)).get("entry", []):
                resource = entry.get("resource", {})
                if resource.get("resourceType") != "Observation":
                    continue
                for item in [resource, *resource.get("component", [])]:
                    quantity = item.get("valueQuantity")
                    if quantity is None or "value" not in quantity:
                        continue
                    for coding in item.get("code", {}).get("coding", []):
                        if coding.get("system") == LOINC:
                            values.append((coding["code"], float(quantity["value"]), quantity_unit(quantity)))
    return values


@pytest.fixture(scope="module")
def omop_values(tmp_path_factory) -> list[tuple[str, float, str | None]]:
    """(LOINC source code, value, unit source value) of every numeric OMOP MEASUREMENT row."""
    archive = realdata(OMOP, tmp_path_factory)
    with zipfile.ZipFile(archive) as tables:
        name = next(n for n in tables.namelist() if n.endswith("MEASUREMENT.csv") and "__MACOSX" not in n)
        rows = csv.DictReader(io.TextIOWrapper(tables.open(name), encoding="utf-8"))
        return [(r["measurement_source_value"], float(r["value_as_number"]), r["unit_source_value"] or None)
                for r in rows if r["value_as_number"]]


def fresh() -> UnitConverter:
    return UnitConverter(yaml.safe_load(UNITS_YAML.read_text(encoding="utf-8")))


# ---------------------------------------------------------------- real units


def test_every_synthea_unit_converts_or_is_rejected_for_a_listed_reason(synthea_values):
    pairs = Counter((code, unit) for code, _, unit in synthea_values)
    assert len(synthea_values) > 15_000 and len(pairs) > 80  # 100 patients: ~16,000 values, ~90 pairs
    units = fresh()
    rejected = {}
    for code, unit in pairs:
        try:
            units.rule(LOINC, code, unit)
        except Rejected as error:
            assert error.code == UNKNOWN_UNIT
            rejected[(code, unit)] = error.message
    assert set(rejected) == set(EXPECTED_REJECTIONS), rejected


def test_synthea_display_units_convert_like_their_ucum_codes(tmp_path_factory):
    """A site that sends only Quantity.unit (the display) gets the same rule as one sending the code."""
    archive = realdata(SYNTHEA, tmp_path_factory)
    seen = set()
    with zipfile.ZipFile(archive) as bundles:
        for name in bundles.namelist():
            if not name.endswith(".json"):
                continue
            for entry in json.loads(bundles.read(name)).get("entry", []):
                resource = entry.get("resource", {})
                for item in [resource, *resource.get("component", [])] if resource.get("resourceType") == "Observation" else []:
                    quantity = item.get("valueQuantity") or {}
                    for coding in item.get("code", {}).get("coding", []):
                        if quantity.get("unit") and quantity.get("code"):
                            seen.add((coding["code"], quantity["unit"], quantity["code"]))
    units = default_units()
    assert seen
    for code, display, ucum in seen:
        assert units.rule(LOINC, code, display) == units.rule(LOINC, code, ucum)


def test_every_omop_measurement_unit_converts(omop_values):
    units = fresh()
    pairs = Counter((code, unit) for code, _, unit in omop_values)
    assert len(pairs) > 80
    for code, unit in pairs:
        units.rule(LOINC, code, unit)  # raises Rejected on a unit it can not store


def test_real_exports_store_one_unit_per_analyte(synthea_values, omop_values):
    units = default_units()
    unit_of: dict[str, set] = {}
    for code, _, unit in synthea_values + omop_values:
        rule = units.rule(LOINC, code, unit)
        unit_of.setdefault(rule.code, set()).add(rule.unit)
    assert {code: u for code, u in unit_of.items() if len(u) > 1} == {}
    canonical = units.canonical_units()
    for code, stored in unit_of.items():
        if code in canonical:
            assert stored == {canonical[code]}
    # eGFR arrives in mL/min (112 values) and in mL/min/{1.73_m2} (59): one unit in the store
    assert unit_of["33914-3"] == {"mL/min/{1.73_m2}"}
    # Synthea's blood-specimen and mass codes fold into the SI serum/plasma codes
    assert {units.canonical_code(LOINC, c) for c in ("2947-0", "6298-4", "2069-3", "20565-8", "38483-4", "2339-0")} \
        == {"2951-2", "2823-3", "2075-0", "2028-9", "14682-9", "14749-6"}


def test_store_is_the_same_in_any_order(synthea_values):
    """The same values in another order, through a converter that met them in that order, store the same."""

    def stored(values):
        units = fresh()
        return sorted((c, round(v, 9), u or "") for c, v, u in (units.convert(LOINC, *row[:2], row[2]) for row in values))

    forward = stored(synthea_values)
    shuffled = list(synthea_values)
    random.Random(7).shuffle(shuffled)
    assert stored(shuffled) == forward
    assert stored(list(reversed(synthea_values))) == forward


# ---------------------------------------------------------------- hand-computed conversions


@pytest.mark.parametrize(("code", "value", "unit", "expected_code", "expected", "expected_unit"), [
    # glucose 180.16 g/mol: 180 mg/dL = 1800 mg/L = 1800 / 180.16 mmol/L
    ("2339-0", 180.0, "mg/dL", "14749-6", 1800 / 180.16, "mmol/L"),
    ("2345-7", 90.0, "mg/dl", "14749-6", 900 / 180.16, "mmol/L"),
    ("2345-7", 90.0, "MG/DL", "14749-6", 900 / 180.16, "mmol/L"),  # spellings ignore case (UCUM does not)
    # creatinine 113.12 g/mol: 1 mg/dL = 10 mg/L = 10 / 113.12 mmol/L = 88.40 umol/L
    ("38483-4", 1.0, "mg/dL", "14682-9", 10_000 / 113.12, "umol/L"),
    # cholesterol 386.65 g/mol (total, LDL, HDL)
    ("2093-3", 200.0, "mg/dL", "14647-2", 2000 / 386.65, "mmol/L"),
    ("18262-6", 100.0, "mg/dL", "22748-8", 1000 / 386.65, "mmol/L"),
    ("2085-9", 50.0, "mg/dL", "14646-4", 500 / 386.65, "mmol/L"),
    # triglycerides as triolein, 885.7 g/mol
    ("2571-8", 150.0, "mg/dL", "14927-8", 1500 / 885.7, "mmol/L"),
    # urea nitrogen: 28.014 g of N per mol of urea
    ("6299-2", 14.0, "mg/dL", "22664-7", 140 / 28.014, "mmol/L"),
    # calcium 40.078 g/mol, valence 2: 10 mg/dL = 100/40.078 mmol/L; 5 meq/L = 2.5 mmol/L
    ("49765-1", 10.0, "mg/dL", "2000-8", 100 / 40.078, "mmol/L"),
    ("17861-6", 5.0, "mEq/L", "2000-8", 2.5, "mmol/L"),
    # sodium, valence 1: meq/L = mmol/L
    ("2947-0", 140.0, "meq/L", "2951-2", 140.0, "mmol/L"),
    # hemoglobin per haem, 16,114.5 g/mol: 8 mmol/L = 8 * 16.1145 g/L = 12.8916 g/dL
    ("59260-0", 8.0, "mmol/L", "718-7", 8 * 1.61145, "g/dL"),
    ("718-7", 135.0, "g/L", "718-7", 13.5, "g/dL"),
    # [degF] -> Cel: (F - 32) * 5/9
    ("8310-5", 98.6, "[degF]", "8310-5", 37.0, "Cel"),
    ("8310-5", 212.0, "degF", "8310-5", 100.0, "Cel"),
    ("8310-5", -40.0, "°F", "8310-5", -40.0, "Cel"),
    ("8310-5", 36.6, "°C", "8310-5", 36.6, "Cel"),
    # [lb_av] = 0.45359237 kg exactly; [in_i] = 2.54 cm exactly
    ("29463-7", 150.0, "[lb_av]", "29463-7", 150 * 0.45359237, "kg"),
    ("29463-7", 70500.0, "g", "29463-7", 70.5, "kg"),
    ("8302-2", 70.0, "[in_i]", "8302-2", 177.8, "cm"),
    ("8302-2", 1.75, "m", "8302-2", 175.0, "cm"),
    # mm[Hg] = 133.322387415 Pa: 16 kPa = 16000 / 133.322387415 mm[Hg]
    ("8480-6", 16.0, "kPa", "8480-6", 16_000 / 133.322387415, "mm[Hg]"),
    ("8462-4", 80.0, "mmHg", "8462-4", 80.0, "mm[Hg]"),
    ("8867-4", 72.0, "{beats}/min", "8867-4", 72.0, "/min"),
    ("6690-2", 6.1, "10*9/L", "6690-2", 6.1, "10*3/uL"),
    ("1988-5", 1.2, "mg/dL", "1988-5", 12.0, "mg/L"),
    # HbA1c: % (NGSP) is the canonical unit; a percent stays a percent ...
    ("4548-4", 6.5, "%", "4548-4", 6.5, "%"),
    # ... and mmol/mol (IFCC) is another scale, not a percent / 10: the IFCC-NGSP master
    # equation NGSP = 0.09148 * IFCC + 2.152 (53 mmol/mol = 7.0 %)
    ("59261-8", 53.0, "mmol/mol", "4548-4", 0.09148 * 53 + 2.152, "%"),
    ("4548-4", 48.0, "mmol/mol", "4548-4", 0.09148 * 48 + 2.152, "%"),
    ("39156-5", 27.3, "kg/m2", "39156-5", 27.3, "kg/m2"),
    ("33914-3", 88.0, "mL/min/1.73m2", "33914-3", 88.0, "mL/min/{1.73_m2}"),
    ("69405-9", 88.0, "mL/min/{1.73_m2}", "33914-3", 88.0, "mL/min/{1.73_m2}"),
    ("72514-3", 4.0, "{score}", "72514-3", 4.0, "{score}"),
    ("72514-3", 4.0, None, "72514-3", 4.0, "{score}"),
])
def test_conversions_match_hand_computed_values(code, value, unit, expected_code, expected, expected_unit):
    assert default_units().convert(LOINC, code, value, unit) == (expected_code, pytest.approx(expected, rel=1e-9), expected_unit)


def test_unlisted_analytes_go_to_the_preferred_unit_of_their_dimension():
    units = default_units()
    assert units.rule(LOINC, "2276-4", "ug/L").unit == "ug/L"  # listed: ferritin
    # 10000-0 is not in units.yaml: a mass concentration goes to g/L, a percent to the unity 1
    assert units.convert(LOINC, "10000-0", 250.0, "ng/mL") == ("10000-0", pytest.approx(250e-6), "g/L")
    assert units.convert(LOINC, "10000-0", 45.0, "%") == ("10000-0", pytest.approx(0.45), "1")
    assert units.convert(LOINC, "10000-0", 3.0, "{count}") == ("10000-0", 3.0, "1")
    assert units.convert(LOINC, "10000-0", 3.0, "mmol/L") == ("10000-0", 3.0, "mmol/L")
    assert units.convert(LOINC, "10000-0", 2.0, "[iU]/mL") == ("10000-0", pytest.approx(2000.0), "[iU]/L")
    # a dimension units.yaml has no preferred unit for: its coherent UCUM form
    assert units.convert(LOINC, "10000-0", 864.0, "mg/(24.h)") == ("10000-0", pytest.approx(864e-3 / 86400), "g.s-1")
    # no unit stays no unit; the pH scale stays itself
    assert units.convert(LOINC, "10000-0", 7.0, None) == ("10000-0", 7.0, None)
    assert units.convert(LOINC, "10000-0", 7.0, "pH") == ("10000-0", 7.0, "[pH]")


def test_other_code_systems_keep_their_code_and_get_the_unit_normalised():
    units = default_units()
    assert units.convert(SNOMED, "2339-0", 90.0, "mg/dl") == ("2339-0", pytest.approx(0.9), "g/L")  # no LOINC folding
    assert units.convert(SNOMED, "271649006", 120.0, "mmHg") == ("271649006", 120.0, "mm[Hg]")
    assert units.convert("urn:local:labs", "NA", 140.0, "mEq/L") == ("NA", 140.0, "meq/L")
    assert units.convert(None, "X", 1.0, None) == ("X", 1.0, None)
    assert units.convert(None, "2339-0", 90.0, "mg/dL")[0] == "14749-6"  # no system: read as LOINC
    assert units.convert(SNOMED, "X", 1.0, "1") == ("X", 1.0, "1")


@pytest.mark.parametrize(("code", "unit", "canonical", "why"), [
    ("2345-7", "furlongs", "mmol/L", "not UCUM nor a known spelling"),  # not UCUM, not a spelling
    ("2345-7", "mmol/l (SI)", "mmol/L", "not UCUM nor a known spelling"),
    ("2345-7", "kg", "mmol/L", "another kind of quantity"),  # a mass for a concentration
    ("29463-7", "mg/dL", "kg", "another kind of quantity"),
    ("1988-5", "mmol/L", "mg/L", "no molar mass"),  # CRP has none in units.yaml: never guessed
    ("2345-7", "meq/L", "mmol/L", "no valence"),  # glucose carries no charge
    ("6690-2", "[IU]/L", "10*3/uL", "arbitrary unit"),  # an arbitrary unit is not a count
    ("4548-4", "1", "%", "other scales"),  # HbA1c: only % and mmol/mol
    ("4548-4", "umol/mol", "%", "other scales"),
    ("71970-8", "U", "{score}", "another kind of quantity"),
    ("2345-7", None, "mmol/L", "no unit"),
    ("2345-7", "  ", "mmol/L", "no unit"),
])
def test_bad_units_are_rejected_naming_the_analyte_and_its_unit_never_the_value(code, unit, canonical, why):
    units = fresh()
    for attempt in range(2):  # the second answer comes from the cache
        with pytest.raises(Rejected) as error:
            units.convert(LOINC, code, 123.456, unit)
        message = error.value.message
        assert error.value.code == UNKNOWN_UNIT
        assert code in message and canonical in message
        assert "123" not in message
        assert why in message
        if unit and len(unit.strip()) > 2:
            assert unit not in message.replace(canonical, "")


def test_unknown_unit_of_an_unlisted_analyte_is_rejected():
    with pytest.raises(Rejected) as error:
        default_units().rule(LOINC, "10000-0", "units")
    assert error.value.code == UNKNOWN_UNIT and "LOINC 10000-0" in error.value.message


# ---------------------------------------------------------------- the interface


def test_rules_are_cached_per_pair_and_apply_to_arrays():
    units = fresh()
    rule = units.rule(LOINC, "2339-0", "mg/dL")
    assert units.rule(LOINC, "2339-0", "mg/dL") is rule
    values = np.array([90.0, 180.0])
    assert np.allclose(rule.apply(values), values * 10 / 180.16)
    assert rule.apply(None) is None
    assert pickle.loads(pickle.dumps(rule)) == rule
    identity = units.rule(LOINC, "8302-2", "cm")
    assert identity == Conversion("8302-2", "cm") and identity.apply(values) is values


def test_canonical_units_list_the_analytes_real_exports_carry():
    units = default_units()
    canonical = units.canonical_units()
    for code, unit in {"4548-4": "%", "39156-5": "kg/m2", "33914-3": "mL/min/{1.73_m2}", "22748-8": "mmol/L",
                       "14646-4": "mmol/L", "14927-8": "mmol/L", "14647-2": "mmol/L", "2951-2": "mmol/L",
                       "2823-3": "mmol/L", "2075-0": "mmol/L", "2028-9": "mmol/L", "22664-7": "mmol/L",
                       "8462-4": "mm[Hg]", "8480-6": "mm[Hg]", "8302-2": "cm", "29463-7": "kg", "72514-3": "{score}",
                       "9279-1": "/min", "2708-6": "%", "59408-5": "%", "8310-5": "Cel"}.items():
        assert canonical[code] == unit, code
    aliases = units.aliases()
    assert aliases["18262-6"] == "22748-8" and aliases["2571-8"] == "14927-8" and aliases["69405-9"] == "33914-3"
    assert not set(aliases) & set(canonical)
    assert units.canonical_unit("2339-0") == "mmol/L" and units.canonical_unit("10000-0") is None


def test_units_yaml_is_ucum_and_has_one_preferred_unit_per_dimension():
    from medmeta.records.ucum import ucum

    config = yaml.safe_load(UNITS_YAML.read_text(encoding="utf-8"))
    registry = ucum()
    for name, spec in config["analytes"].items():
        registry.parse(spec["unit"])  # raises UcumError
        for unit in [*(spec.get("from") or {}), *(spec.get("spellings") or {}).values()]:
            registry.parse(unit)
        assert spec.get("molar_mass") is None or spec["molar_mass"] > 0, name
    for spelling in config["spellings"].values():
        registry.parse(spelling)
    preferred = [registry.parse(u) for u in config["preferred_units"]]
    for i, a in enumerate(preferred):
        for b in preferred[i + 1:]:
            assert not (registry.commensurable(a, b) and a.equivalents == b.equivalents), (a.text, b.text)

def test_the_ucum_library_is_imported_only_when_a_rule_needs_it():
    code = ("import sys; import medmeta.cli, medmeta.records.units as u; "
            "c = u.default_units(); c.rule('http://loinc.org', '8302-2', 'cm'); "
            "print(sorted(m for m in ('ucumvert', 'pint', 'lark') if m in sys.modules)); "
            "c.rule('http://loinc.org', '8302-2', '[in_i]'); print('ucumvert' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.stdout.split("\n")[:2] == ["[]", "True"]
