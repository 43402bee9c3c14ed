"""The validation rules: read from YAML, checked whole before any data is touched.

The packaged ``validation/rules.yaml`` holds the defaults. A user's file replaces, per table it
names, that table's whole rule list (and may override ``label_coverage``). Every problem is
refused with a ``MedmetaError`` naming the file, the table, the rule number and what is wrong.

This module does not import Great Expectations (it takes seconds): the expectation classes a
rule may name are a static allow-list, ``SUPPORTED``, which the tests check against GX.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medmeta.errors import MedmetaError
from medmeta.schema import TABLES

DEFAULT_RULES = Path(__file__).with_name("rules.yaml")
SEVERITIES = ("critical", "warning")

# What a rule's expectation checks, which decides how its arguments are checked and whether it
# can point at rows: "column" and "pair" are row-level, "table" is not.
SUPPORTED: dict[str, tuple[str, frozenset[str]]] = {
    # name: (kind, allowed GX arguments besides column / column_A / column_B)
    "ExpectColumnValuesToNotBeNull": ("column", frozenset({"mostly"})),
    "ExpectColumnValuesToBeNull": ("column", frozenset({"mostly"})),
    "ExpectColumnValuesToBeUnique": ("column", frozenset({"mostly"})),
    "ExpectColumnValuesToBeInSet": ("column", frozenset({"mostly", "value_set"})),
    "ExpectColumnValuesToNotBeInSet": ("column", frozenset({"mostly", "value_set"})),
    "ExpectColumnValuesToBeBetween": (
        "column",
        frozenset({"mostly", "min_value", "max_value", "strict_min", "strict_max"}),
    ),
    "ExpectColumnValuesToMatchRegex": ("column", frozenset({"mostly", "regex"})),
    "ExpectColumnValuesToNotMatchRegex": ("column", frozenset({"mostly", "regex"})),
    "ExpectColumnValueLengthsToBeBetween": ("column", frozenset({"mostly", "min_value", "max_value"})),
    "ExpectColumnValuesToBeOfType": ("column", frozenset({"mostly", "type_"})),
    "ExpectColumnValuesToBeInTypeList": ("column", frozenset({"mostly", "type_list"})),
    "ExpectColumnPairValuesAToBeGreaterThanB": ("pair", frozenset({"mostly", "or_equal", "ignore_row_if"})),
    "ExpectColumnPairValuesToBeEqual": ("pair", frozenset({"mostly", "ignore_row_if"})),
    "ExpectColumnPairValuesToBeInSet": ("pair", frozenset({"mostly", "value_pairs_set", "ignore_row_if"})),
    "ExpectTableRowCountToBeBetween": ("table", frozenset({"min_value", "max_value"})),
    "ExpectColumnToExist": ("table", frozenset({"column"})),
}
_RULE_KEYS = {"expectation", "severity", "id", "where", "value_set_from"}


@dataclass(frozen=True)
class Rule:
    table: str
    id: str
    expectation: str  # GX class name
    severity: str  # critical | warning
    kwargs: dict[str, Any]  # passed to the GX class as they are (value_set filled in at run time)
    where: dict[str, Any] | None = None  # {column: value or [values]}: the rows the rule applies to
    value_set_from: tuple[str, str] | None = None  # (table, column) whose values are the set

    @property
    def kind(self) -> str:
        return SUPPORTED[self.expectation][0]

    @property
    def row_level(self) -> bool:
        return self.kind in ("column", "pair")


@dataclass(frozen=True)
class LabelCoverage:
    meta_train_min_cases: int = 20
    meta_test_min_cases: int = 10


@dataclass(frozen=True)
class Rules:
    tables: dict[str, tuple[Rule, ...]]
    label_coverage: LabelCoverage = field(default_factory=LabelCoverage)
    files: tuple[str, ...] = ()

    def all(self) -> list[Rule]:
        return [rule for rules in self.tables.values() for rule in rules]


def load_rules(path: Path | str | None = None) -> Rules:
    """The packaged rules, with ``path``'s tables (and label_coverage) replacing them."""
    base = _read(DEFAULT_RULES)
    tables = _parse_tables(DEFAULT_RULES, base)
    coverage = _parse_coverage(DEFAULT_RULES, base.get("label_coverage") or {}, LabelCoverage())
    files = [str(DEFAULT_RULES)]
    if path is not None:
        path = Path(path)
        user = _read(path)
        tables.update(_parse_tables(path, user))
        if "label_coverage" in user:
            coverage = _parse_coverage(path, user["label_coverage"] or {}, coverage)
        files.append(str(path))
    return Rules(tables=tables, label_coverage=coverage, files=tuple(files))


def _read(path: Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise MedmetaError(f"rules file {path}: can not be read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise MedmetaError(f"rules file {path}: not valid YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise MedmetaError(f"rules file {path}: expected a mapping with 'tables' and 'label_coverage'")
    unknown = set(data) - {"tables", "label_coverage"}
    if unknown:
        raise MedmetaError(f"rules file {path}: unknown top-level key(s) {sorted(unknown)}")
    return data


def _fail(path: Path | str, table: str, number: int | None, problem: str):
    where = f"table {table}" + (f", rule {number}" if number is not None else "")
    raise MedmetaError(f"rules file {path}: {where}: {problem}")


def _parse_coverage(path: Path, raw: Any, default: LabelCoverage) -> LabelCoverage:
    if not isinstance(raw, dict) or set(raw) - {"meta_train_min_cases", "meta_test_min_cases"}:
        raise MedmetaError(
            f"rules file {path}: label_coverage takes meta_train_min_cases and meta_test_min_cases"
        )
    train = raw.get("meta_train_min_cases", default.meta_train_min_cases)
    test = raw.get("meta_test_min_cases", default.meta_test_min_cases)
    for name, value in (("meta_train_min_cases", train), ("meta_test_min_cases", test)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise MedmetaError(f"rules file {path}: label_coverage.{name} must be a whole number >= 1")
    if test > train:
        raise MedmetaError(f"rules file {path}: label_coverage.meta_test_min_cases is above meta_train_min_cases")
    return LabelCoverage(train, test)


def _parse_tables(path: Path, data: dict) -> dict[str, tuple[Rule, ...]]:
    raw_tables = data.get("tables") or {}
    if not isinstance(raw_tables, dict):
        raise MedmetaError(f"rules file {path}: 'tables' must map table names to rule lists")
    out: dict[str, tuple[Rule, ...]] = {}
    for table, raw_rules in raw_tables.items():
        if table not in TABLES:
            raise MedmetaError(
                f"rules file {path}: unknown table {table!r} (tables: {', '.join(TABLES)})"
            )
        if not isinstance(raw_rules, list):
            _fail(path, table, None, "expected a list of rules")
        rules = []
        seen: set[str] = set()
        for number, raw in enumerate(raw_rules, 1):
            rule = _parse_rule(path, table, number, raw)
            if rule.id in seen:
                _fail(path, table, number, f"duplicate rule id {rule.id!r}")
            seen.add(rule.id)
            rules.append(rule)
        out[table] = tuple(rules)
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _parse_rule(path: Path, table: str, number: int, raw: Any) -> Rule:
    def fail(problem: str):
        _fail(path, table, number, problem)

    if not isinstance(raw, dict):
        fail("expected a mapping with at least 'expectation' and 'severity'")
    name = raw.get("expectation")
    if not isinstance(name, str) or not name:
        fail("missing 'expectation' (a Great Expectations class name)")
    if name not in SUPPORTED:
        fail(f"unknown expectation {name!r} (supported: {', '.join(sorted(SUPPORTED))})")
    kind, allowed = SUPPORTED[name]
    severity = raw.get("severity")
    if severity not in SEVERITIES:
        fail(f"severity must be one of {', '.join(SEVERITIES)}, not {severity!r}")
    rule_id = raw.get("id", f"{name}_{number}")
    if not isinstance(rule_id, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]+", rule_id):
        fail("id must be a non-empty string of letters, digits, '_', '.', '-'")

    kwargs = {k: v for k, v in raw.items() if k not in _RULE_KEYS}
    columns = set(TABLES[table].names)
    needed = {"column": ("column",), "pair": ("column_A", "column_B"), "table": ()}[kind]
    for key in needed:
        if key not in kwargs:
            fail(f"{name} needs '{key}'")
    unknown = set(kwargs) - allowed - set(needed)
    if unknown:
        fail(f"{name} does not take {', '.join(sorted(unknown))}")
    for key in ("column", "column_A", "column_B"):
        if key in kwargs and kwargs[key] not in columns:
            fail(f"{key} {kwargs[key]!r} is not a column of {table} ({', '.join(columns)})")

    if "mostly" in kwargs:
        mostly = kwargs["mostly"]
        if not _is_number(mostly) or not 0 < mostly <= 1:
            fail(f"mostly must be a number in (0, 1], not {mostly!r}")
    for key in ("min_value", "max_value"):
        if key in kwargs and kwargs[key] is not None and not _is_number(kwargs[key]):
            fail(f"{key} must be a number, not {kwargs[key]!r}")
    if kwargs.get("min_value") is not None and kwargs.get("max_value") is not None:
        if kwargs["min_value"] > kwargs["max_value"]:
            fail(f"min_value {kwargs['min_value']} is above max_value {kwargs['max_value']}")
    if kwargs.get("min_value") is None and kwargs.get("max_value") is None and (
        name in ("ExpectColumnValuesToBeBetween", "ExpectTableRowCountToBeBetween", "ExpectColumnValueLengthsToBeBetween")
    ):
        fail(f"{name} needs min_value or max_value")
    for key in ("strict_min", "strict_max", "or_equal"):
        if key in kwargs and not isinstance(kwargs[key], bool):
            fail(f"{key} must be true or false")
    if "regex" in kwargs:
        if not isinstance(kwargs["regex"], str):
            fail("regex must be a string")
        try:
            re.compile(kwargs["regex"])
        except re.error as exc:
            fail(f"regex does not compile ({exc})")
    if "value_pairs_set" in kwargs:
        pairs = kwargs["value_pairs_set"]
        if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
            fail("value_pairs_set must be a list of [a, b] pairs")
        kwargs["value_pairs_set"] = [tuple(p) for p in pairs]

    value_set_from = None
    if name in ("ExpectColumnValuesToBeInSet", "ExpectColumnValuesToNotBeInSet"):
        has_set, has_from = "value_set" in kwargs, "value_set_from" in raw
        if has_set == has_from:
            fail("give exactly one of value_set and value_set_from")
        if has_set and not isinstance(kwargs["value_set"], list):
            fail("value_set must be a list")
        if has_from:
            ref = raw["value_set_from"]
            if not isinstance(ref, str) or ref.count(".") != 1:
                fail("value_set_from must be '<table>.<column>', e.g. patients.patient_id")
            value_set_from = tuple(ref.split("."))
            ref_table, ref_column = value_set_from
            if ref_table not in TABLES or ref_column not in TABLES[ref_table].names:
                fail(f"value_set_from {ref}: no such table and column in the canonical tables")
    elif "value_set_from" in raw:
        fail(f"value_set_from only goes with ExpectColumnValuesToBeInSet / NotBeInSet, not {name}")

    where = raw.get("where")
    if where is not None:
        if kind == "table":
            fail("'where' only applies to column and column-pair expectations")
        if not isinstance(where, dict) or not where:
            fail("'where' must map column names to a value or a list of values")
        for column, value in where.items():
            if column not in columns:
                fail(f"where column {column!r} is not a column of {table}")
            if isinstance(value, (dict, type(None))) or (isinstance(value, list) and not value):
                fail(f"where {column}: expected a value or a non-empty list of values")
    return Rule(
        table=table,
        id=rule_id,
        expectation=name,
        severity=severity,
        kwargs=kwargs,
        where=dict(where) if where else None,
        value_set_from=value_set_from,
    )
