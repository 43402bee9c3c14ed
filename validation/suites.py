"""Great Expectations 1.x suites built from the rules.

Great Expectations takes seconds to import, so it is imported here, inside the functions, and
only when something is validated. One ephemeral (in-memory) context per validation run; it
writes nothing to disk and sends no analytics.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd

from validation.rules import Rule


def new_context():
    """An in-memory GX context with analytics and progress bars off."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    for name in ("great_expectations", "great_expectations.data_context.types.base"):
        logging.getLogger(name).setLevel(logging.WARNING)  # no INFO chatter on the CLI's stderr
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


DOCS_SITE = "medmeta"


def add_docs_site(context, docs_dir: Path) -> None:
    """A GX Data Docs site (static HTML) in ``docs_dir``."""
    context.add_data_docs_site(DOCS_SITE, {
        "class_name": "SiteBuilder",
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
    })


def row_condition(where: dict[str, Any] | None):
    """``{code: "14749-6"}`` -> ``Column("code") == "14749-6"`` (values in a list: ``is_in``)."""
    if not where:
        return None
    from great_expectations.expectations.row_conditions import Column

    condition = None
    for column, value in where.items():
        part = Column(column).is_in(list(value)) if isinstance(value, list) else Column(column) == value
        condition = part if condition is None else condition & part
    return condition


def parent_values(tables: dict[str, pd.DataFrame], table: str, column: str) -> list:
    """The distinct non-null values of ``table.column`` (an empty list when it is absent)."""
    frame = tables.get(table)
    if frame is None or column not in frame.columns:
        return []
    return pd.unique(frame[column].dropna()).tolist()


def build_expectation(rule: Rule, tables: dict[str, pd.DataFrame]):
    import great_expectations.expectations as gxe

    kwargs = dict(rule.kwargs)
    if rule.value_set_from is not None:
        kwargs["value_set"] = parent_values(tables, *rule.value_set_from)
    condition = row_condition(rule.where)
    if condition is not None:
        kwargs["row_condition"] = condition
    return getattr(gxe, rule.expectation)(**kwargs, meta={"rule_id": rule.id, "severity": rule.severity})


def build_suite(table: str, rules: tuple[Rule, ...], tables: dict[str, pd.DataFrame]):
    import great_expectations as gx

    suite = gx.ExpectationSuite(name=f"medmeta.{table}")
    for rule in rules:
        suite.add_expectation(build_expectation(rule, tables))
    return suite
