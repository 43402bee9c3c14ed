"""Staged compound measurements to the canonical ``compound_activities`` table (at consolidation).

One row per (task, compound_key): a compound measured several times in one task (in one file or in
several) is one row with the mean of its pActivities and ``n_measurements``, the number of
measurements. Its ``smiles``, ``target``, ``activity_type``, ``site`` and ``source`` are those of its
first measurement by (source, location), so the result does not depend on the order files arrived in.
A binary label is kept when every labelled measurement agrees; a compound labelled both active and
inactive in one task has all its rows rejected (``conflicting_labels``), the rest go on.
"""

from __future__ import annotations

import pandas as pd

from medmeta.errors import CONFLICTING_LABELS
from medmeta.ingest.parts import rejected_rows
from medmeta.schema import COMPOUND_ACTIVITIES

KEY = ["task", "compound_key"]


def aggregate(staged: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the canonical table, sorted by task and compound_key; the rejected rows)."""
    if staged.empty:
        return COMPOUND_ACTIVITIES.empty_table().to_pandas(), rejected_rows(staged.assign(location=[]), [])
    staged = staged.sort_values(KEY + ["source", "location"], kind="mergesort").reset_index(drop=True)
    labels = staged.dropna(subset=["active"]).groupby(KEY)["active"].nunique()
    conflicting = labels[labels > 1].index
    bad = staged.set_index(KEY).index.isin(conflicting)
    rejects = rejected_rows(staged[bad], f"{CONFLICTING_LABELS}: the compound is labelled both active and inactive "
                                         "in this task")
    kept = staged[~bad]
    groups = kept.groupby(KEY, sort=True)
    first = groups.first()  # first non-null per column: smiles, target, type, site, source
    frame = pd.DataFrame({
        "target": first["target"], "activity_type": first["activity_type"], "smiles": first["smiles"],
        "p_activity": groups["p_activity"].mean(),
        "active": groups["active"].first(),
        "n_measurements": groups.size().astype("int32"),
        "site": first["site"], "source": first["source"],
    }).reset_index()
    frame["active"] = frame["active"].astype("boolean")
    return frame[COMPOUND_ACTIVITIES.names], rejects
