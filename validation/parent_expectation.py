"""``ExpectColumnValuesToBeInParentColumn``: every value exists in another table's key column.

Great Expectations has no cross-table expectation for pandas. ``ExpectColumnValuesToBeInSet``
with the parent's keys as its value set works, but GX copies an expectation's configuration
(through pydantic) a few hundred times per run, so a value set of 5,000 patient ids costs
about 0.5 s per rule whatever the table size. This custom expectation names the parent column
instead (``parent="patients.patient_id"``); its metric looks the keys up in the values bound
for the run by ``parent_keys``. It is a real GX column-map expectation: GX computes the
unexpected count, values and row indices, ``mostly`` and the Data Docs as for any other.

Imports Great Expectations: import it only where GX is already needed (validation/suites.py).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import ClassVar, Iterator

import pandas as pd
from great_expectations.execution_engine import PandasExecutionEngine
from great_expectations.expectations.expectation import ColumnMapExpectation
from great_expectations.expectations.metrics.map_metric_provider import (
    ColumnMapMetricProvider,
    column_condition_partial,
)

_KEYS: dict[str, pd.Index] = {}


@contextmanager
def parent_keys(keys: dict[str, list]) -> Iterator[None]:
    """Bind ``{"patients.patient_id": [...]}`` for the expectations run inside the block."""
    _KEYS.update({name: pd.Index(values) for name, values in keys.items()})
    try:
        yield
    finally:
        for name in keys:
            _KEYS.pop(name, None)


class ColumnValuesInParentColumn(ColumnMapMetricProvider):
    condition_metric_name = "column_values.in_parent_column"
    condition_value_keys = ("parent",)

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column, parent, **kwargs):
        if parent not in _KEYS:
            raise KeyError(f"no keys bound for parent column {parent!r}")
        return column.isin(_KEYS[parent])


class ExpectColumnValuesToBeInParentColumn(ColumnMapExpectation):
    """Expect each value of the column to be a key of the parent column (``table.column``)."""

    parent: str

    map_metric = "column_values.in_parent_column"
    success_keys = ("parent", "mostly")
    args_keys = ("column", "parent")
    library_metadata: ClassVar[dict] = {"maturity": "production", "tags": ["medmeta"], "contributors": ["medmeta"]}
