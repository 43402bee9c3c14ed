"""``medmeta predict`` for a compound-activity model: rank a compound library for a new target from the few
compounds measured on it (issue 15 item 5).

    predict_compounds(found, support_path, query_path, max_bytes) -> result (dict, see ``rank``)

- The model is a registry version whose card has ``task_kind == "compound_activity"`` (``is_compound_model``):
  a meta-learner (``config.learner == "activity_gp"``: ``metalearn.activity.ActivityGP(**config.learner_config)``
  with the version's safetensors weights; or an episodic learner, ``config.learner`` one of ``EPISODIC``:
  ``config.spec`` rebuilt by ``medmeta.chem.episodic.learner_from_card`` with the weights and the input scaling
  saved among them, adapted on the support set, scores = P(active)) or a baseline (``card["baseline"]["method"]``, a key of
  ``medmeta.chem.baselines.BASELINES``: fitted on the support set here, seed ``config.seed`` or 0). Either way
  the compounds are featurised with ``config.featuriser`` (``medmeta.chem.features.FEATURISERS``).
- The support (CSV or Parquet) is read as ingest reads an activity table (``medmeta.records.tabular.read_table``,
  ``medmeta.chem.activity_table.recognise``, ``medmeta.chem.activity_rows.stage_activities``): a SMILES column and a
  binary label (0/1, active/inactive, true/false) or an activity value with its unit (``exp_mean [nM]``, ``value``
  + ``units``) or a p-scaled column (``pKi``, ``pchembl_value``). Structures are standardised as ingest does; a
  row that can not be read (an unparseable SMILES, a missing value, ...) is skipped and counted by reason; one
  compound measured twice is one support compound (mean pActivity; conflicting labels: skipped, counted). A
  labelled row keeps its label; a value is active when its pActivity is at or above ``config.threshold`` (null:
  the median pActivity of the support's compounds, as the task sets do).
- The query (CSV or Parquet): a SMILES column and, optionally, an id column (``ID_COLUMNS``), kept in the output.
  A row whose structure can not be standardised is listed as not scored with its reason; a compound met before
  in the query (same standardised parent) is kept once, the repeat listed as ``duplicate_compound``.

Refused with one ``MedmetaError`` line (the CLI exits 2), naming files, columns and counts, never a SMILES: a
missing or unreadable file, no SMILES column, no activity column, a value whose unit nobody names, a support of
several targets, a support without both classes after labelling, a support with no usable row, a card that does
not say how to rebuild its model. RDKit, scikit-learn and torch are imported when a prediction runs, never at
import.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from medmeta.errors import CONFLICTING_LABELS, DUPLICATE_COMPOUND, MedmetaError, Rejected

COMPOUND_ACTIVITY = "compound_activity"  # card["task_kind"] of a compound-activity model
EPISODIC = ("maml", "fomaml", "reptile", "protonet", "matchingnet")  # medmeta.chem.episodic.EPISODIC
LEARNERS = ("activity_gp", *EPISODIC)  # card["config"]["learner"] values this module can rebuild
ID_COLUMNS = ("id", "compound_id", "molecule_chembl_id", "chembl_id", "name")
QUERY_CHUNK = 4096  # query compounds featurised and scored at a time, so memory stays bounded
# ``recognise`` wants a task (a target column or a CHEMBL<digits>_<type> file name); a support set is one new
# target whose name predict does not need, so a placeholder task name stands in for it.
SUPPORT_TASK_NAME = "CHEMBL0_Activity"


def is_compound_model(card: dict) -> bool:
    return isinstance(card, dict) and card.get("task_kind") == COMPOUND_ACTIVITY


@dataclass
class Support:
    smiles: list[str]  # canonical SMILES of the standardised parents, one per compound
    labels: np.ndarray  # int64 0/1, one per compound
    rows: int  # rows read (incl. skipped ones)
    skipped: Counter = field(default_factory=Counter)  # reason code -> rows
    merged: int = 0  # rows that repeated a compound of an earlier row (merged into it)
    threshold: float | None = None  # the pActivity threshold used (None: every compound was labelled)
    threshold_rule: str = ""  # "card" or "support median" or "labels"

    @property
    def counts(self) -> dict:
        actives = int(self.labels.sum())
        return {"actives": actives, "inactives": len(self.labels) - actives, "rows": self.rows,
                "skipped": dict(sorted(self.skipped.items())), "merged_repeats": self.merged,
                "threshold": self.threshold, "threshold_rule": self.threshold_rule}


@dataclass
class Query:
    rows: list[int]  # the row number of each kept compound (CSV line, header = 1; Parquet row from 1)
    ids: list[str] | None  # the id cell of each kept compound, when the query has an id column
    smiles: list[str]  # canonical SMILES of each kept compound
    not_scored: list[dict]  # {"row", "id"?, "reason", "same_as"?} of every row left out, in row order
    total: int  # rows read
    id_column: str | None


# -- reading ------------------------------------------------------------------------------------------

def read_frame(path: Path, role: str, max_bytes: int):
    """(the table at ``path`` indexed by row number, its unreadable rows): a CSV or Parquet file, read once from
    a checked descriptor (``medmeta.predict.cases.read_input``), as ingest reads one."""
    from medmeta.predict.cases import read_input
    from medmeta.records.tabular import read_table

    path = Path(path)
    if not os.path.lexists(path):
        raise MedmetaError(f"{role} {path}: no such file")
    if os.path.isdir(path):
        raise MedmetaError(f"{role} {path}: a folder; a compound-activity model takes a CSV or Parquet table with a "
                           "SMILES column")
    data = read_input(path, role, max_bytes)
    kind = "parquet" if data[:4] == b"PAR1" else "csv"
    if kind == "csv":
        try:
            data.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            raise MedmetaError(f"{role} {path}: not a readable CSV or Parquet file (not UTF-8 at byte "
                               f"{error.start})") from None
    try:
        frame, unreadable = read_table(data, kind)
    except Rejected as rejected:
        raise MedmetaError(f"{role} {path}: {rejected.message}") from None
    if len(frame) == 0 and not unreadable:
        raise MedmetaError(f"{role} {path}: no rows (a header and one row per compound expected)")
    return frame, unreadable


def _smiles_column(columns, role: str, path: Path) -> str:
    from medmeta.chem.activity_table import SMILES_COLUMNS, _find

    found = _find(columns, SMILES_COLUMNS)
    if found is None:
        raise MedmetaError(f"{role} {path}: no SMILES column (one of {', '.join(SMILES_COLUMNS)})")
    return found


def has_smiles_column(columns) -> bool:
    """True when a header names a SMILES column (``medmeta.chem.activity_table.SMILES_COLUMNS``)."""
    from medmeta.chem.activity_table import SMILES_COLUMNS, _find

    return _find([str(c) for c in columns], SMILES_COLUMNS) is not None


def read_support(path: Path, threshold: float | None, max_bytes: int) -> Support:
    """The support set at ``path`` as labelled, standardised compounds (see the module docstring)."""
    from medmeta.chem.activity_rows import stage_activities
    from medmeta.chem.activity_table import recognise

    path = Path(path)
    frame, unreadable = read_frame(path, "support", max_bytes)
    columns = [str(c) for c in frame.columns]
    _smiles_column(columns, "support", path)
    try:
        layout = recognise(columns, SUPPORT_TASK_NAME)
    except Rejected as rejected:
        raise MedmetaError(f"support {path}: {rejected.message}") from None
    if layout is None:
        raise MedmetaError(f"support {path}: no activity column: a binary label (active, label, ...: 0/1, "
                           "active/inactive, true/false), an activity value with its unit (exp_mean [nM], value + "
                           "units) or a p-scaled value (pKi, pIC50, pchembl_value)")
    if layout.task is not None:
        targets = {str(v).strip() for v in frame[layout.task].tolist() if str(v).strip() and str(v) != "nan"}
        if len(targets) > 1:
            raise MedmetaError(f"support {path}: compounds of {len(targets)} targets (column {layout.task}); a "
                               "support set is the compounds measured on the one new target")
    layout = replace(layout, task=None, activity_type=None, file_task=SUPPORT_TASK_NAME, file_target="CHEMBL0",
                     file_type="Activity")
    staged = stage_activities(frame, layout, "predict", "support")
    skipped = Counter(r.code for r in [*unreadable, *staged.rejects])
    rows = staged.table.to_pylist()
    total = len(frame) + len(unreadable)
    if not rows:
        raise MedmetaError(f"support {path}: no usable row among {total} ({_reasons(skipped)})")
    by_key: dict[str, dict] = {}
    for row in rows:  # one compound measured twice: one support compound (mean pActivity, its labels)
        entry = by_key.setdefault(row["compound_key"], {"smiles": row["smiles"], "p": [], "labels": set()})
        if row["p_activity"] is not None:
            entry["p"].append(row["p_activity"])
        if row["active"] is not None:
            entry["labels"].add(bool(row["active"]))
    merged = len(rows) - len(by_key)
    conflicting = [k for k, e in by_key.items() if len(e["labels"]) > 1]
    for key in conflicting:
        skipped[CONFLICTING_LABELS] += sum(1 for r in rows if r["compound_key"] == key)
        del by_key[key]
    compounds = list(by_key.values())
    valued = [float(np.mean(e["p"])) for e in compounds if not e["labels"] and e["p"]]
    rule, cut = "labels", None
    if valued:
        rule, cut = ("card", float(threshold)) if threshold is not None else ("support median", float(np.median(valued)))
    labels = np.array([int(next(iter(e["labels"]))) if e["labels"] else int(float(np.mean(e["p"])) >= cut)
                       for e in compounds], dtype=np.int64)
    support = Support([e["smiles"] for e in compounds], labels, total, skipped, merged, cut, rule)
    counts = support.counts
    if counts["actives"] == 0 or counts["inactives"] == 0:
        where = "" if cut is None else (f" at the card's threshold pActivity {cut:g}" if rule == "card"
                                        else f" at the support's median pActivity {cut:g}")
        raise MedmetaError(f"support {path}: {counts['actives']} actives and {counts['inactives']} inactives"
                           f"{where}; a support set needs both classes"
                           + (f" ({sum(skipped.values())} rows skipped: {_reasons(skipped)})" if skipped else ""))
    return support


def read_query(path: Path, max_bytes: int) -> Query:
    """The query compounds at ``path``: standardised, repeats kept once, the rest listed as not scored."""
    from medmeta.chem.activity_table import _find
    from medmeta.chem.standardise import standardise_all

    path = Path(path)
    frame, unreadable = read_frame(path, "query", max_bytes)
    columns = [str(c) for c in frame.columns]
    smiles_column = _smiles_column(columns, "query", path)
    id_column = _find(columns, ID_COLUMNS)
    numbers = [int(n) for n in frame.index.tolist()]
    cells = frame[smiles_column].tolist()
    id_cells = [_cell(v) for v in frame[id_column].tolist()] if id_column else None
    structures = standardise_all([_cell(v) for v in cells])
    not_scored = [{"row": int(str(r.location or "").removeprefix("row ") or 0), "reason": r.code}
                  for r in unreadable]
    if id_column:
        for entry in not_scored:
            entry["id"] = None
    first_row: dict[str, int] = {}
    kept_rows, kept_ids, kept_smiles = [], [] if id_column else None, []
    for i, (number, structure) in enumerate(zip(numbers, structures)):
        entry = {"row": number}
        if id_column:
            entry["id"] = id_cells[i]
        if isinstance(structure, Rejected):
            not_scored.append({**entry, "reason": structure.code})
            continue
        seen = first_row.setdefault(structure.compound_key, number)
        if seen != number:
            not_scored.append({**entry, "reason": DUPLICATE_COMPOUND, "same_as": seen})
            continue
        kept_rows.append(number)
        kept_smiles.append(structure.smiles)
        if id_column:
            kept_ids.append(id_cells[i])
    not_scored.sort(key=lambda e: e["row"])
    return Query(kept_rows, kept_ids, kept_smiles, not_scored, len(numbers) + len(unreadable), id_column)


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def _reasons(counter: Counter) -> str:
    return ", ".join(f"{code} {n}" for code, n in sorted(counter.items())) or "none"


# -- the model ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CompoundModel:
    ref: str
    method: str  # "activity_gp" or a baseline's key in BASELINES
    is_baseline: bool
    featuriser: str
    threshold: float | None
    seed: int
    card: dict


def compound_model(found) -> CompoundModel:
    """What a compound-activity card says to rebuild, checked; one line naming the key when it does not."""
    from medmeta.chem.baselines import BASELINES
    from medmeta.chem.features import FEATURISERS

    card = found.card
    config = card.get("config") if isinstance(card.get("config"), dict) else {}
    baseline = card.get("baseline")
    if baseline:
        method = str(baseline.get("method"))
        if method not in BASELINES:
            raise MedmetaError(f"model {found.ref}: its card's baseline.method is not one of {', '.join(BASELINES)}")
        featuriser = config.get("featuriser") or baseline.get("features") or BASELINES[method][1]
    else:
        method = config.get("learner")
        if method not in LEARNERS:
            raise MedmetaError(f"model {found.ref}: its card's config.learner is not one of {', '.join(LEARNERS)}; "
                               "it can not be rebuilt")
        needs = "learner_config" if method == "activity_gp" else "spec"
        if not isinstance(config.get(needs), dict):
            raise MedmetaError(f"model {found.ref}: its card has no config.{needs}; it can not be rebuilt")
        featuriser = config.get("featuriser")
    if featuriser not in FEATURISERS:
        raise MedmetaError(f"model {found.ref}: its card's featuriser is not one of {', '.join(FEATURISERS)}")
    threshold = config.get("threshold")
    if threshold is not None and not (isinstance(threshold, (int, float)) and math.isfinite(threshold)):
        raise MedmetaError(f"model {found.ref}: its card's config.threshold is neither null nor a pActivity")
    seed = int(config.get("seed", 0)) if isinstance(config.get("seed", 0), int) else 0
    return CompoundModel(found.ref, method, bool(baseline), featuriser, threshold, seed, card)


def _scorer(model: CompoundModel, found, support_x: np.ndarray, support_y: np.ndarray):
    """``fn(query_x) -> scores`` (float64), the model fitted on / conditioned on the support set."""
    if model.is_baseline:
        from medmeta.chem.baselines import BASELINES

        fit_and_score = BASELINES[model.method][0]
        return lambda query_x: np.asarray(fit_and_score(support_x, support_y, query_x, model.seed), dtype=np.float64)
    if model.method in EPISODIC:
        return _episodic_scorer(model, found, support_x, support_y)
    import torch

    from metalearn.activity import ActivityGP

    try:
        learner = ActivityGP(**model.card["config"]["learner_config"])
    except (TypeError, ValueError) as error:
        raise MedmetaError(f"model {model.ref}: its card's config.learner_config can not be rebuilt "
                           f"({type(error).__name__}: {str(error)[:120]})") from None
    width = learner.config()["in_features"]
    if support_x.shape[1] != width:
        raise MedmetaError(f"model {model.ref}: its featuriser {model.featuriser} gives {support_x.shape[1]} "
                           f"columns, its learner takes {width}")
    try:
        learner.load_state_dict(found.load_weights())
    except RuntimeError as error:
        raise MedmetaError(f"model {model.ref}: its weights do not fit its card's config.learner_config "
                           f"({str(error).splitlines()[0][:160]})") from None
    learner.eval()
    sx = torch.from_numpy(np.asarray(support_x, dtype=np.float32))
    sy = torch.from_numpy(np.asarray(support_y, dtype=np.int64))
    return lambda query_x: learner.scores(sx, sy, torch.from_numpy(np.asarray(query_x, dtype=np.float32))
                                          ).double().cpu().numpy()


def _episodic_scorer(model: CompoundModel, found, support_x: np.ndarray, support_y: np.ndarray):
    """A published episodic learner (``config.spec`` + its weights, the input scaling among them) adapted on the
    support set once; the query's probability of the active class."""
    from medmeta.chem.episodic import conditioned, learner_from_card

    width = model.card["config"]["spec"].get("backbone", {}).get("config", {}).get("in_features")
    if support_x.shape[1] != width:
        raise MedmetaError(f"model {model.ref}: its featuriser {model.featuriser} gives {support_x.shape[1]} "
                           f"columns, its learner takes {width}")
    try:
        learner, scaling = learner_from_card(model.card["config"], found.load_weights())
    except (KeyError, TypeError, ValueError, RuntimeError, MedmetaError) as error:
        raise MedmetaError(f"model {model.ref}: its weights do not fit its card's config.spec "
                           f"({type(error).__name__}: {str(error).splitlines()[0][:160]})") from None
    return conditioned(learner, scaling, support_x, support_y)


# -- predicting ---------------------------------------------------------------------------------------

def predict_compounds(found, support_path: Path | None, query_path: Path, max_bytes: int) -> dict:
    """The query ranked by the model fitted on (or conditioned on) the support set.

    ``{"model", "method", "baseline", "featuriser", "support": {actives, inactives, rows, skipped,
    merged_repeats, threshold, threshold_rule}, "query": {rows, ranked, not_scored: {reason: n}, id_column},
    "ranking": [{rank, row, id?, smiles, score}], "not_scored": [{row, id?, reason, same_as?}]}``; rank 1 is the
    most likely active, ties keep the query's row order. Deterministic: the same files give the same ranking.
    """
    from medmeta.chem.features import FEATURISERS

    model = compound_model(found)
    if support_path is None:
        raise MedmetaError(f"model {model.ref} is a compound-activity model: give --support, the compounds "
                           "measured on the new target (a SMILES column and a label or an activity value)")
    query = read_query(query_path, max_bytes)  # the query first: a records CSV given here is named at once
    support = read_support(support_path, model.threshold, max_bytes)
    featurise = FEATURISERS[model.featuriser]
    support_x = featurise(support.smiles)
    score = _scorer(model, found, support_x, support.labels)
    scores = np.empty(len(query.smiles), dtype=np.float64)
    for start in range(0, len(query.smiles), QUERY_CHUNK):
        chunk = query.smiles[start:start + QUERY_CHUNK]
        scores[start:start + len(chunk)] = score(featurise(chunk))
    order = np.argsort(-scores, kind="stable")
    ranking = []
    for rank, i in enumerate(order, start=1):
        entry = {"rank": rank, "row": query.rows[i]}
        if query.ids is not None:
            entry["id"] = query.ids[i]
        entry.update({"smiles": query.smiles[i], "score": round(float(scores[i]), 6)})
        ranking.append(entry)
    return {"model": model.ref, "method": model.method, "baseline": model.is_baseline,
            "featuriser": model.featuriser, "support": support.counts,
            "query": {"rows": query.total, "ranked": len(ranking),
                      "not_scored": dict(sorted(Counter(e["reason"] for e in query.not_scored).items())),
                      "id_column": query.id_column},
            "ranking": ranking, "not_scored": query.not_scored}


# -- output -------------------------------------------------------------------------------------------

def header_line(result: dict) -> str:
    """One line for stderr: the model, the method, the support's counts and what the query lost."""
    s, q = result["support"], result["query"]
    method = (f"{result['method']} (a baseline, not a meta-learned model)" if result["baseline"]
              else f"{result['method']} (meta-learner)")
    threshold = "as labelled"
    if s["threshold"] is not None:
        whose = "the card's threshold" if s["threshold_rule"] == "card" else "the support's median"
        threshold = f"active at pActivity >= {s['threshold']:g}, {whose}"
    parts = [f"{result['model']}: {method} on {result['featuriser']}",
             f"support {s['actives']} actives / {s['inactives']} inactives ({threshold})"]
    if s["skipped"]:
        parts.append(f"support rows skipped {sum(s['skipped'].values())} ({_reasons(Counter(s['skipped']))})")
    if s["merged_repeats"]:
        parts.append(f"support repeats merged {s['merged_repeats']}")
    lost = dict(q["not_scored"])
    duplicates = lost.pop(DUPLICATE_COMPOUND, 0)
    query = f"query {q['rows']} rows: {q['ranked']} ranked"
    if lost:
        query += f", {sum(lost.values())} not scored ({_reasons(Counter(lost))})"
    if duplicates:
        query += f", {duplicates} repeat{'s' if duplicates != 1 else ''} of a compound kept once"
    parts.append(query)
    return "; ".join(parts)


def table_rows(result: dict) -> tuple[list[str], list[list]]:
    """(columns, rows) of the output table: the ranking, then every row not scored (no rank, no score)."""
    with_id = result["query"]["id_column"] is not None
    columns = ["rank", "row"] + (["id"] if with_id else []) + ["smiles", "score", "not_scored"]
    rows = [[e["rank"], e["row"]] + ([e["id"]] if with_id else []) + [e["smiles"], e["score"], ""]
            for e in result["ranking"]]
    for e in result["not_scored"]:
        note = e["reason"] + (f" (same compound as row {e['same_as']})" if "same_as" in e else "")
        rows.append([None, e["row"]] + ([e.get("id")] if with_id else []) + [None, None, note])
    return columns, rows


def csv_text(result: dict) -> str:
    columns, rows = table_rows(result)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    return out.getvalue()


def write_output(result: dict, path: Path) -> None:
    """The output table to ``path``: Parquet when it ends in ``.parquet`` or ``.pq``, else CSV (atomic)."""
    from medmeta.atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix.lower() in (".parquet", ".pq"):
            import pyarrow as pa
            import pyarrow.parquet as pq

            columns, rows = table_rows(result)
            table = pa.table({c: [row[i] for row in rows] for i, c in enumerate(columns)})
            pq.write_table(table, tmp)
        else:
            Path(tmp).write_text(csv_text(result), encoding="utf-8")
