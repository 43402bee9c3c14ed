"""Validate the canonical tables against the rules; split off the rows warning rules flag.

``validate_tables`` runs one GX suite per table (built from the rules) in one ephemeral
context and returns a ``ValidationReport``: per rule whether it passed, how many rows it
checked and flagged, a short sample of the flagged values and the flagged rows' index labels.

No failing value leaves this module as text. GX runs with ``exclude_unexpected_values``: its
results (and so the Data Docs rendered from them) carry counts and row positions, never values.
The samples are read from the flagged rows here: a number, a date or a null as it is, a text
value as ``masked`` (medmeta/records/masking.py: keyed hash, length, character classes), since
a text column that fails its rule may hold a name typed where a code belongs.

What the delivery must hold comes from ``rules.require`` (validation/rules.py): a required table
without rows, or no rows in any table of ``require.any_of``, fails critically; a table that is
not required may be empty (``ValidationReport.empty_tables`` lists the empty ones).

A failed critical rule fails the snapshot; it moves no rows. A failed warning rule sends the
rows it flagged to the validation quarantine (``ValidationReport.quarantine``); every row ends
up either kept or quarantined, never silently dropped. A warning rule that passes thanks to
``mostly`` moves nothing (its flagged rows are still counted in the report).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medmeta.errors import MedmetaError
from medmeta.pseudonyms import Pseudonymizer
from medmeta.records.masking import masked
from medmeta.schema import TABLES
from validation.rules import REQUIRE, Rule, Rules
from validation.suites import DOCS_SITE, add_docs_site, build_suite, new_context, parent_values

SAMPLE = 5  # flagged values kept per rule, as strings (text values masked)
# COMPLETE: every flagged row's position (the quarantine needs them all); no values, for the
# results and the Data Docs built from them may hold nothing a failing value could carry
RESULT_FORMAT = {"result_format": "COMPLETE", "exclude_unexpected_values": True}


@dataclass
class RuleResult:
    table: str
    rule: str  # the rule id
    expectation: str  # GX class name
    severity: str
    success: bool
    element_count: int  # rows the rule looked at (after its `where`); the row count for table rules
    unexpected_count: int
    sample: list[str] = field(default_factory=list)  # the first flagged values, text ones masked
    rows: list = field(default_factory=list)  # index labels of the flagged rows
    positions: list[int] = field(default_factory=list)  # their positions in the table
    error: str | None = None  # GX could not evaluate the rule (e.g. a missing column)
    columns: tuple[str, ...] = ()

    def to_dict(self, max_rows: int = 100) -> dict:
        return {
            "table": self.table,
            "rule": self.rule,
            "expectation": self.expectation,
            "severity": self.severity,
            "success": self.success,
            "element_count": self.element_count,
            "unexpected_count": self.unexpected_count,
            "sample": self.sample,
            "rows": [_plain(r) for r in self.rows[:max_rows]],
            "rows_truncated": len(self.rows) > max_rows,
            "error": self.error,
        }


@dataclass
class ValidationReport:
    results: list[RuleResult]
    row_counts: dict[str, int]  # per table validated
    empty_tables: list[str] = field(default_factory=list)  # canonical tables without rows (absent ones too)
    require: dict = field(default_factory=dict)  # what the delivery had to hold: {"tables": [...], "any_of": [...]}

    @property
    def critical_failures(self) -> list[RuleResult]:
        return [r for r in self.results if r.severity == "critical" and not r.success]

    @property
    def warnings(self) -> list[RuleResult]:
        return [r for r in self.results if r.severity == "warning" and not r.success]

    @property
    def success(self) -> bool:
        return not self.critical_failures

    @property
    def rows_checked(self) -> int:
        return sum(self.row_counts.values())

    def result(self, table: str, rule: str) -> RuleResult:
        for r in self.results:
            if r.table == table and r.rule == rule:
                return r
        raise KeyError(f"{table}.{rule}")

    def to_dict(self) -> dict:
        return {
            "success": self.success,
            "rows_checked": self.rows_checked,
            "row_counts": dict(self.row_counts),
            "empty_tables": list(self.empty_tables),
            "require": dict(self.require),
            "critical_failures": [r.to_dict() for r in self.critical_failures],
            "warnings": [r.to_dict() for r in self.warnings],
            "results": [r.to_dict(max_rows=0) for r in self.results],
        }

    def quarantine(self, tables: dict[str, pd.DataFrame]) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
        """(kept tables, quarantined rows) for the tables this report validated.

        ``quarantined`` has one row per flagged input row: table, row (its index label),
        source, expectations (the failed warning rules' ids, "; "-joined), reason, and columns:
        the columns whose values failed a rule in that row, critical rules included ("; "-joined;
        their values must not be written as text). For every table
        ``len(tables[t]) == len(kept[t]) + (quarantined.table == t).sum()``.
        """
        kept: dict[str, pd.DataFrame] = {}
        records: list[dict] = []
        for table, frame in tables.items():
            if table in self.row_counts and len(frame) != self.row_counts[table]:
                raise MedmetaError(
                    f"quarantine: table {table} has {len(frame)} rows, the report validated "
                    f"{self.row_counts[table]}: pass the same tables"
                )
            flagged: dict[int, list[RuleResult]] = {}
            failing: dict[int, set[str]] = {}  # position -> columns of every failed rule that flagged it
            for r in self.results:
                if r.table == table and not r.success:
                    for pos in r.positions:
                        failing.setdefault(pos, set()).update(r.columns)
                        if r.severity == "warning":
                            flagged.setdefault(pos, []).append(r)
            if not flagged:
                kept[table] = frame
                continue
            mask = pd.Series(True, index=range(len(frame)))
            mask.iloc[sorted(flagged)] = False
            kept[table] = frame.iloc[mask.to_numpy()]
            sources = frame["source"] if "source" in frame.columns else None
            for pos in sorted(flagged):
                failed = flagged[pos]
                records.append(
                    {
                        "table": table,
                        "row": _plain(frame.index[pos]),
                        "source": None if sources is None else _plain(sources.iloc[pos]),
                        "expectations": "; ".join(r.rule for r in failed),
                        "reason": "; ".join(
                            f"{r.rule}: {r.expectation} on {', '.join(r.columns)}" for r in failed
                        ),
                        "columns": "; ".join(sorted(failing[pos])),
                    }
                )
        quarantined = pd.DataFrame.from_records(
            records, columns=["table", "row", "source", "expectations", "reason", "columns"]
        )
        return kept, quarantined


def _plain(value: Any) -> Any:
    """numpy scalars -> Python ones (JSON, Parquet)."""
    return value.item() if hasattr(value, "item") else value


def _empty(table: str) -> pd.DataFrame:
    return TABLES[table].empty_table().to_pandas()


def _columns(rule: Rule) -> tuple[str, ...]:
    return tuple(rule.kwargs[k] for k in ("column", "column_A", "column_B") if k in rule.kwargs)


def validate_tables(tables: dict[str, pd.DataFrame], rules: Rules, docs_dir: Path | None = None, *,
                    pseudonymizer: Pseudonymizer) -> ValidationReport:
    """Run every table's rules (a missing table counts as empty); see the module docstring.

    Each batch holds only the columns its rules read. Rules that share a ``where`` are
    validated together as one batch of the rows it selects. That is what a GX ``row_condition`` does, done once per
    group instead of several times per expectation (26 row conditions over a million
    observations took 3 s of filtering); a ``where`` that selects no rows is not sent to GX (its
    rules pass with ``element_count`` 0, and Data Docs leave them out). Rules with a ``value_set_from`` look the parent keys
    up at run time (validation/parent_expectation.py). With ``docs_dir``, GX Data Docs (static
    HTML) for the run are written there. ``pseudonymizer`` keys the masks of text samples.
    """
    from validation.parent_expectation import parent_keys

    context = new_context()
    if docs_dir is not None:
        add_docs_site(context, docs_dir)
    # one asset and batch definition for every batch: each asset added re-serialises the context
    batch = context.data_sources.add_pandas("medmeta").add_dataframe_asset("tables").add_batch_definition_whole_dataframe("batch")
    parents = {rule.value_set_from for rule in rules.all() if rule.value_set_from is not None}
    results: list[RuleResult] = []
    row_counts: dict[str, int] = {}
    with parent_keys({".".join(p): parent_values(tables, *p) for p in parents}):
        for table, table_rules in rules.tables.items():
            frame = tables.get(table)
            if frame is None:
                frame = _empty(table)
            row_counts[table] = len(frame)
            groups = _partition(frame, table_rules)
            for number, (where, group_rules, positions) in enumerate(groups):
                if positions is not None and len(positions) == 0:
                    # a `where` that selects no rows (a code system this delivery does not use):
                    # the rules pass on 0 rows, as GX would say, without a GX batch (~30 ms each)
                    results += [_on_no_rows(rule) for rule in group_rules]
                    continue
                name = f"medmeta.{table}" + (f".{number}" if where else "")
                # only the columns the rules read (GX hashes the whole batch to name it), and
                # positions, not the caller's labels: GX reports the labels of the frame it is given
                columns = sorted({c for rule in group_rules for c in _columns(rule)}) or list(frame.columns[:1])
                batch_frame = frame[columns] if positions is None else frame[columns].iloc[positions]
                batch_frame = batch_frame.reset_index(drop=True)
                run = _validate(context, batch, name, group_rules, batch_frame, docs_dir is not None)
                by_id = {rule.id: rule for rule in group_rules}
                for outcome in run.results:
                    rule = by_id[outcome.expectation_config.meta["rule_id"]]
                    results.append(_rule_result(rule, outcome, frame, positions, pseudonymizer))
        if rules.delivery:
            # one row per table of require.any_of that has rows: ExpectTableRowCountToBeBetween(min 1)
            present = [t for t in rules.require.any_of if len(tables.get(t, ())) > 0]
            frame = pd.DataFrame({"table": pd.Series(present, dtype=object)})
            run = _validate(context, batch, f"medmeta.{REQUIRE}", rules.delivery, frame, docs_dir is not None)
            by_id = {rule.id: rule for rule in rules.delivery}
            for outcome in run.results:
                rule = by_id[outcome.expectation_config.meta["rule_id"]]
                result = _rule_result(rule, outcome, frame, None, pseudonymizer)
                result.columns = tuple(rules.require.any_of)
                results.append(result)
    if docs_dir is not None:  # one build of the site from every stored result (a build per batch re-rendered
        context.build_data_docs(site_names=[DOCS_SITE])  # every earlier page again: 9 s of 15 on the demo)
    order = {(r.table, r.id): i for i, r in enumerate(rules.all())}
    results.sort(key=lambda r: order[(r.table, r.rule)])
    empty = _empty_tables(tables, rules)
    return ValidationReport(results=results, row_counts=row_counts, empty_tables=empty,
                            require=rules.require.as_dict())


COMPOUND_TABLES = frozenset({"compound_activities"})  # a compound delivery's; every other table is a records one


def _empty_tables(tables: dict[str, pd.DataFrame], rules: Rules) -> list[str]:
    """The empty tables of the kinds of data this delivery holds or must hold: the records tables when any
    has rows or ``require`` names one, the compound tables likewise (a records delivery does not list
    ``compound_activities`` as empty, nor a compound delivery the records tables)."""
    required = set(rules.require.tables) | set(rules.require.any_of)
    kinds = [kind for kind in (COMPOUND_TABLES, frozenset(TABLES) - COMPOUND_TABLES)
             if required & kind or any(len(tables.get(t, ())) for t in kind)]
    return [t for t in TABLES if len(tables.get(t, ())) == 0 and any(t in kind for kind in kinds)]


def _partition(frame: pd.DataFrame, rules: tuple[Rule, ...]) -> list[tuple[dict | None, tuple[Rule, ...], np.ndarray | None]]:
    """Group rules by their ``where``: (where, rules, positions of the rows it selects).

    The rules without a ``where`` come first with ``positions`` None (the whole table). Row
    positions come from one ``groupby`` per ``where`` column (and one null test for a ``None``
    value), not a mask per rule; several columns intersect through a boolean marker of the
    larger selection, made once per (column, values).
    """
    groups: dict[str, tuple[dict | None, list[Rule]]] = {}
    for rule in rules:
        key = json.dumps(rule.where, sort_keys=True, default=str) if rule.where else ""
        groups.setdefault(key, (rule.where, []))[1].append(rule)
    indices: dict[str, dict] = {}
    selections: dict[str, np.ndarray] = {}  # json (column, values) -> sorted row positions

    def rows_of(column: str, wanted) -> np.ndarray:
        key = json.dumps([column, wanted], default=str)
        if key not in selections:
            values = wanted if isinstance(wanted, list) else [wanted]
            parts = []
            if any(v is not None for v in values):
                if column not in indices:
                    indices[column] = frame.groupby(column, sort=False, dropna=True).indices
                parts += [indices[column][v] for v in values if v is not None and v in indices[column]]
            if any(v is None for v in values):
                parts.append(np.flatnonzero(frame[column].isna().to_numpy()))
            if not parts:
                selections[key] = np.empty(0, dtype=np.intp)
            else:  # each part is sorted already (groupby indices, flatnonzero)
                selections[key] = parts[0] if len(parts) == 1 else np.sort(np.concatenate(parts))
        return selections[key]

    markers: dict[str, np.ndarray] = {}

    def marker_of(column: str, wanted) -> np.ndarray:
        key = json.dumps([column, wanted], default=str)
        if key not in markers:
            markers[key] = np.zeros(len(frame), dtype=bool)
            markers[key][rows_of(column, wanted)] = True
        return markers[key]

    out = []
    for key in sorted(groups):
        where, group = groups[key]
        if not where:
            out.append((None, tuple(group), None))
            continue
        selected: np.ndarray | None = None
        for column, wanted in sorted(where.items(), key=lambda cv: len(rows_of(*cv))):
            rows = rows_of(column, wanted)
            if selected is None:
                selected = rows
            elif len(selected):  # keep the rows of the smaller selection that the larger one holds
                selected = selected[marker_of(column, wanted)[selected]]
        out.append((where, tuple(group), selected))
    return out


def _validate(context, batch, name: str, rules: tuple[Rule, ...], frame: pd.DataFrame, with_docs: bool):
    """Run one suite of ``rules`` on ``frame`` as one GX batch."""
    import great_expectations as gx

    suite = context.suites.add(build_suite(name, rules))
    definition = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
    return _run(context, definition, frame, with_docs=with_docs)


def _run(context, definition, frame: pd.DataFrame, with_docs: bool):
    """One batch's validation result; through a checkpoint (which keeps the result for Data Docs) when asked."""
    import great_expectations as gx

    if not with_docs:
        return definition.run(batch_parameters={"dataframe": frame}, result_format=RESULT_FORMAT)
    checkpoint = context.checkpoints.add(gx.Checkpoint(  # stores the result; the site is built once, at the end
        name=f"{definition.name}.checkpoint", validation_definitions=[definition], result_format=RESULT_FORMAT,
    ))
    (run,) = checkpoint.run(batch_parameters={"dataframe": frame}).run_results.values()
    return run


def _on_no_rows(rule: Rule) -> RuleResult:
    """The result of a row-level rule whose ``where`` selects no rows: it passes, having looked at none."""
    return RuleResult(table=rule.table, rule=rule.id, expectation=rule.expectation, severity=rule.severity,
                      success=True, element_count=0, unexpected_count=0, columns=_columns(rule))


def _sample(value: Any, pseudonymizer: Pseudonymizer) -> str:
    """One flagged value as the report shows it: text masked, anything else (numbers, dates,
    nulls, booleans) as it is; a column pair as a tuple of both."""
    if isinstance(value, tuple):
        return "(" + ", ".join(_sample(v, pseudonymizer) for v in value) + ")"
    value = _plain(value)
    return masked(value, pseudonymizer) if isinstance(value, str) else str(value)


def _rule_result(rule: Rule, outcome, frame: pd.DataFrame, positions: np.ndarray | None,
                 pseudonymizer: Pseudonymizer) -> RuleResult:
    """``positions``: the batch's rows in ``frame`` (None: the batch is the whole table)."""
    info = outcome.exception_info or {}
    errors = [info] if "raised_exception" in info else list(info.values())
    error = next((e.get("exception_message") for e in errors if e.get("raised_exception")), None)
    res = outcome.result or {}
    flagged = [int(p) for p in res.get("unexpected_index_list") or []] if rule.row_level else []
    positions = flagged if positions is None else [int(positions[p]) for p in flagged]
    if rule.kind == "table":
        observed = res.get("observed_value")
        element_count = int(observed) if isinstance(observed, (int, float)) else len(frame)
        unexpected = 0 if outcome.success else 1
    else:
        element_count = int(res.get("element_count", 0) or 0)
        unexpected = int(res.get("unexpected_count", 0) or 0)
    columns = _columns(rule)
    values = [frame[columns[0]].iloc[p] if len(columns) == 1 else tuple(frame[c].iloc[p] for c in columns)
              for p in positions[:SAMPLE]] if columns and rule.row_level else []
    return RuleResult(
        table=rule.table,
        rule=rule.id,
        expectation=rule.expectation,
        severity=rule.severity,
        success=bool(outcome.success) and error is None,
        element_count=element_count,
        unexpected_count=unexpected,
        sample=[_sample(v, pseudonymizer) for v in values],
        rows=[_plain(frame.index[p]) for p in positions],
        positions=positions,
        error=error,
        columns=columns,
    )
