"""Custom GX expectations for code systems whose codes carry a check digit.

- ``ExpectColumnValuesToBeValidSnomedCtId``: each value is a SNOMED CT identifier (6-18 digits,
  no leading zero, Verhoeff check digit);
- ``ExpectColumnValuesToBeValidLoincCode``: each value is a LOINC code (``^[0-9]{1,7}-[0-9]$``
  and its mod-10 check digit).

The checks themselves are plain Python in ``validation/check_digits.py``; these are real GX
column-map expectations around them, like ``validation/parent_expectation.py``: GX computes the
unexpected count, values and row indices, ``mostly`` and the Data Docs as for any other. Nulls
are not looked at (GX drops them before a map metric); a rule of its own checks them.

Imports Great Expectations: import it only where GX is already needed (validation/suites.py).
"""

from __future__ import annotations

from typing import ClassVar

from great_expectations.execution_engine import PandasExecutionEngine
from great_expectations.expectations.expectation import ColumnMapExpectation
from great_expectations.expectations.metrics.map_metric_provider import (
    ColumnMapMetricProvider,
    column_condition_partial,
)

from validation.check_digits import is_valid_loinc, is_valid_sctid, valid_mask

_LIBRARY = {"maturity": "production", "tags": ["medmeta", "terminology"], "contributors": ["medmeta"]}


class ColumnValuesValidSnomedCtId(ColumnMapMetricProvider):
    condition_metric_name = "column_values.valid_snomed_ct_id"

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column, **kwargs):
        return valid_mask(column, is_valid_sctid)


class ColumnValuesValidLoincCode(ColumnMapMetricProvider):
    condition_metric_name = "column_values.valid_loinc_code"

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column, **kwargs):
        return valid_mask(column, is_valid_loinc)


class ExpectColumnValuesToBeValidSnomedCtId(ColumnMapExpectation):
    """Expect each value to be a SNOMED CT identifier: 6-18 digits, no leading 0, a valid Verhoeff check digit."""

    map_metric = "column_values.valid_snomed_ct_id"
    success_keys = ("mostly",)
    args_keys = ("column",)
    library_metadata: ClassVar[dict] = _LIBRARY


class ExpectColumnValuesToBeValidLoincCode(ColumnMapExpectation):
    """Expect each value to be a LOINC code: 1-7 digits, '-', and its mod-10 check digit."""

    map_metric = "column_values.valid_loinc_code"
    success_keys = ("mostly",)
    args_keys = ("column",)
    library_metadata: ClassVar[dict] = _LIBRARY


CUSTOM = {
    "ExpectColumnValuesToBeValidSnomedCtId": ExpectColumnValuesToBeValidSnomedCtId,
    "ExpectColumnValuesToBeValidLoincCode": ExpectColumnValuesToBeValidLoincCode,
}
