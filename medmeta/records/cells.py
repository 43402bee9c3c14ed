"""One cell of a tabular export (CSV, Parquet, OMOP): blank or not, and as a date."""

from __future__ import annotations

import math
from datetime import date, datetime

import pandas as pd

from medmeta.errors import INVALID_RECORD, Rejected


def blank(value) -> bool:
    """None, NaN, NaT, NA or only whitespace."""
    if value is None or value is pd.NaT or value is pd.NA:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, str) and not value.strip()


def to_date(value, date_format: str | None, column: str) -> date:
    """A date from a date, a timestamp, or text (ISO 8601, or ``date_format``)."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    text = str(value).strip()
    try:
        if date_format:
            return datetime.strptime(text, date_format).date()
        return date.fromisoformat(text[:10])
    except ValueError:
        raise Rejected(INVALID_RECORD, f"column {column} is not a valid date") from None
