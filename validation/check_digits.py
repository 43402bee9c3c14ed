"""Check digits as validation uses them: the pure checks live in ``medmeta.terminology.check_digits``
(ingest applies them too, before a code is stored); ``valid_mask`` applies one to a column by its
distinct values (a column of a million rows holds a few thousand codes).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from medmeta.terminology.check_digits import (  # noqa: F401  (re-exported for validation and its tests)
    LOINC,
    SCTID,
    is_valid_loinc,
    is_valid_sctid,
    luhn_check_digit,
    verhoeff_valid,
)


def valid_mask(column: pd.Series, check: Callable[[object], bool]) -> pd.Series:
    """``check`` applied to each value of ``column`` (once per distinct value), as a boolean Series
    on the column's index. Nulls are the caller's business (GX drops them before a map metric)."""
    codes, uniques = pd.factorize(column, use_na_sentinel=True)
    verdicts = np.fromiter((check(value) for value in uniques), dtype=bool, count=len(uniques))
    valid = np.zeros(len(codes), dtype=bool)
    present = codes >= 0
    valid[present] = verdicts[codes[present]]
    return pd.Series(valid, index=column.index)
