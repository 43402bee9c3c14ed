"""The validation rules: read from YAML, checked whole before any data is touched.

The packaged ``validation/rules.yaml`` holds the defaults. A user's file replaces, per table it
names, that table's whole rule list, and may override ``label_coverage`` and ``require`` key by
key. Every problem is refused with a ``MedmetaError`` naming the file, the table (or key), the
rule number and what is wrong.

What a delivery must hold is ``require``: ``tables`` each must have at least one row, and at
least one of ``any_of`` must. The critical non-empty checks are generated from it (``Rules``
holds them with the others): a rule ``not_empty`` first in each required table, and the rule
``any_of`` of the pseudo-table ``require``. A table that is not required may be empty.

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
from medmeta.terminology.systems import canonical_system

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
    # medmeta's own (validation/code_expectations.py): code systems with a check digit
    "ExpectColumnValuesToBeValidSnomedCtId": ("column", frozenset({"mostly"})),
    "ExpectColumnValuesToBeValidLoincCode": ("column", frozenset({"mostly"})),
    "ExpectColumnPairValuesAToBeGreaterThanB": ("pair", frozenset({"mostly", "or_equal", "ignore_row_if"})),
    "ExpectColumnPairValuesToBeEqual": ("pair", frozenset({"mostly", "ignore_row_if"})),
    "ExpectColumnPairValuesToBeInSet": ("pair", frozenset({"mostly", "value_pairs_set", "ignore_row_if"})),
    "ExpectTableRowCountToBeBetween": ("table", frozenset({"min_value", "max_value"})),
    "ExpectColumnToExist": ("table", frozenset({"column"})),
}
_RULE_KEYS = {"expectation", "severity", "id", "where", "value_set_from"}
_TOP_LEVEL = ("tables", "label_coverage", "require")

NOT_EMPTY = "not_empty"  # the id of the generated rule "a required table has rows"; reserved
REQUIRE = "require"  # the pseudo-table of the rule ``any_of`` (it reads several tables)
ANY_OF = "any_of"
SYSTEM_COLUMNS = frozenset({"system", "drug_system", "value_system"})  # a `where` value there names a code system


@dataclass(frozen=True)
class Rule:
    table: str
    id: str
    expectation: str  # GX class name
    severity: str  # critical | warning
    kwargs: dict[str, Any]  # passed to the GX class as they are (value_set filled in at run time)
    where: dict[str, Any] | None = None  # {column: value or [values]}, None = null: the rows the rule applies to
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
class Require:
    """What a delivery must hold: every one of ``tables``, and at least one of ``any_of``
    (nothing when ``any_of`` is empty)."""

    tables: tuple[str, ...] = ("patients",)
    any_of: tuple[str, ...] = ("conditions", "observations", "medication_exposures")

    def as_dict(self) -> dict:
        return {"tables": list(self.tables), "any_of": list(self.any_of)}


@dataclass(frozen=True)
class Rules:
    tables: dict[str, tuple[Rule, ...]]  # per table, its generated ``not_empty`` (when required) first
    label_coverage: LabelCoverage = field(default_factory=LabelCoverage)
    files: tuple[str, ...] = ()
    require: Require = field(default_factory=Require)
    delivery: tuple[Rule, ...] = ()  # rules over several tables: ``require.any_of``

    def all(self) -> list[Rule]:
        return [rule for rules in self.tables.values() for rule in rules] + list(self.delivery)


def load_rules(path: Path | str | None = None) -> Rules:
    """The packaged rules, with ``path``'s tables replacing them and its ``label_coverage`` and
    ``require`` keys replacing theirs; the critical non-empty rules generated from ``require``."""
    base = _read(DEFAULT_RULES)
    tables = _parse_tables(DEFAULT_RULES, base)
    coverage = _parse_coverage(DEFAULT_RULES, base.get("label_coverage") or {}, LabelCoverage())
    require = parse_require(DEFAULT_RULES, base.get("require") or {}, Require())
    files = [str(DEFAULT_RULES)]
    if path is not None:
        path = Path(path)
        user = _read(path)
        tables.update(_parse_tables(path, user))
        if "label_coverage" in user:
            coverage = _parse_coverage(path, user["label_coverage"] or {}, coverage)
        if "require" in user:
            require = parse_require(path, user["require"], require)
        files.append(str(path))
    tables, delivery = _with_required(tables, require)
    return Rules(tables=tables, label_coverage=coverage, files=tuple(files), require=require, delivery=delivery)


def parse_require(path: Path | str, raw: Any, default: Require) -> Require:
    """``require`` from a settings file; a key left out keeps ``default``'s value.

    ``{tables: [patients, images], any_of: [conditions, observations]}``: lists of canonical
    table names, each at most once. Anything else is refused naming ``path`` and the key.
    """
    if not isinstance(raw, dict):
        raise MedmetaError(f"rules file {path}: require must be a mapping with 'tables' and/or 'any_of'")
    unknown = set(raw) - {"tables", "any_of"}
    if unknown:
        raise MedmetaError(f"rules file {path}: require: unknown key(s) {sorted(map(str, unknown))} "
                           "(require takes tables and any_of)")
    values = {}
    for key in ("tables", "any_of"):
        if key not in raw:
            values[key] = getattr(default, key)
            continue
        names = raw[key]
        if names is None:
            names = []
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise MedmetaError(f"rules file {path}: require.{key} must be a list of table names")
        for name in names:
            if name not in TABLES:
                raise MedmetaError(f"rules file {path}: require.{key}: unknown table {name!r} "
                                   f"(tables: {', '.join(TABLES)})")
        if len(set(names)) != len(names):
            raise MedmetaError(f"rules file {path}: require.{key} names a table twice")
        values[key] = tuple(names)
    return Require(**values)


def _with_required(tables: dict[str, tuple[Rule, ...]], require: Require
                   ) -> tuple[dict[str, tuple[Rule, ...]], tuple[Rule, ...]]:
    """The tables' rules with ``not_empty`` first in each required table, and the delivery rules."""
    out = dict(tables)
    for table in require.tables:
        rule = Rule(table=table, id=NOT_EMPTY, expectation="ExpectTableRowCountToBeBetween", severity="critical",
                    kwargs={"min_value": 1})
        out[table] = (rule, *out.get(table, ()))
    delivery = ()
    if require.any_of:
        # validated on a batch holding one row per non-empty table of ``any_of`` (validation/run.py)
        delivery = (Rule(table=REQUIRE, id=ANY_OF, expectation="ExpectTableRowCountToBeBetween",
                         severity="critical", kwargs={"min_value": 1}),)
    return out, delivery


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
        raise MedmetaError(f"rules file {path}: expected a mapping with {', '.join(map(repr, _TOP_LEVEL))}")
    unknown = set(data) - set(_TOP_LEVEL)
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


def _canonical_systems(value: Any) -> Any:
    """A code system named in a ``where`` as its canonical URI (``sct`` -> http://snomed.info/sct)."""
    if isinstance(value, list):
        return [_canonical_systems(v) for v in value]
    return canonical_system(value) if isinstance(value, str) else value


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
    if rule_id == NOT_EMPTY:
        fail(f"the id {NOT_EMPTY!r} is reserved: which tables must have rows is the top-level 'require' "
             "(e.g. require: {tables: [patients, images]})")

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
            fail("'where' must map column names to a value, null, or a list of them")
        for column, value in where.items():
            if column not in columns:
                fail(f"where column {column!r} is not a column of {table}")
            values = value if isinstance(value, list) else [value]
            if not values or any(isinstance(v, (dict, list)) for v in values):
                fail(f"where {column}: expected a value, null, or a non-empty list of them")
        where = {column: _canonical_systems(value) if column in SYSTEM_COLUMNS else value
                 for column, value in where.items()}
    return Rule(
        table=table,
        id=rule_id,
        expectation=name,
        severity=severity,
        kwargs=kwargs,
        where=dict(where) if where else None,
        value_set_from=value_set_from,
    )
