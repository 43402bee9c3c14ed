"""Great Expectations 1.x suites built from the rules.

Great Expectations takes seconds to import, so it is imported here, inside the functions, and
only when something is validated. One ephemeral (in-memory) context per validation run; it
writes nothing to disk and sends no analytics.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
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


def parent_values(tables: dict[str, pd.DataFrame], table: str, column: str) -> list:
    """The distinct non-null values of ``table.column`` (an empty list when it is absent)."""
    frame = tables.get(table)
    if frame is None or column not in frame.columns:
        return []
    return pd.unique(frame[column].dropna()).tolist()


def expectation_class(name: str):
    """The GX class a rule names: one of GX's own, or one of medmeta's (validation/code_expectations.py)."""
    import great_expectations.expectations as gxe

    from validation.code_expectations import CUSTOM

    return CUSTOM[name] if name in CUSTOM else getattr(gxe, name)


def build_expectation(rule: Rule):
    """The GX expectation of one rule. A ``value_set_from`` rule becomes
    ``ExpectColumnValuesToBeInParentColumn`` (validation/parent_expectation.py): the parent's keys
    are bound at run time, not copied into the configuration."""
    kwargs = dict(rule.kwargs)
    meta = {"rule_id": rule.id, "severity": rule.severity}
    if rule.value_set_from is not None:
        from validation.parent_expectation import ExpectColumnValuesToBeInParentColumn

        kwargs.pop("value_set", None)
        return ExpectColumnValuesToBeInParentColumn(**kwargs, parent=".".join(rule.value_set_from), meta=meta)
    return expectation_class(rule.expectation)(**kwargs, meta=meta)


def build_suite(name: str, rules: tuple[Rule, ...]):
    import great_expectations as gx

    suite = gx.ExpectationSuite(name=name)
    for rule in rules:
        suite.add_expectation(build_expectation(rule))
    return suite
