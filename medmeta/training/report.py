"""A pipeline run in words: the Markdown artifact, the pipeline's log lines and the lines `medmeta run`
prints. Each answers the operator's three questions: did validation pass, what did each model score
against the baselines (95% intervals, paired differences), which version is champion and challenger
now, and how long each stage took.

The summary is the one ``flows/pipeline.py`` builds; ``tasks.pipeline.record_pipeline_run`` adds
``registry`` (``{name: {"champion": n|None, "challenger": n|None}}``, read back after the run),
``stages`` (``[{"stage": flow name, "run": flow run name, "within": the parent stage's run name or None,
"state", "seconds"}]``) and ``seconds``. Every renderer
takes a summary without them too (older runs, a failed read).
"""

from __future__ import annotations

from medmeta.chem.report import compound_lines, compound_markdown  # plain Python: no RDKit, no torch

METHODS = (("meta", "meta-learner"), ("from_scratch", "from scratch"), ("pretrain_finetune", "pretrain + fine-tune"))
BASELINES = ("from_scratch", "pretrain_finetune")


def headline(evaluation: dict) -> list[dict]:
    """Per shot count: each method's accuracy with its 95% interval (``ci95`` its half-width, ``low``,
    ``high``), and ``paired``: the meta-learner minus each baseline on the same episodes, with its
    95% interval (``difference``, ``ci95``)."""
    out = []
    for e in evaluation["by_shots"]:
        entry = {"shots": e["shots"], "episodes": e.get("episodes")}
        for r in e["rows"]:
            entry[r["method"]] = {"accuracy": round(r["mean"], 4), "ci95": round(r["ci95"], 4),
                                  "low": round(r["low"], 4), "high": round(r["high"], 4)}
        entry["paired"] = {p["vs"]: {"difference": round(p["mean_difference"], 4), "ci95": round(p["ci95"], 4)}
                           for p in e.get("paired", [])}
        out.append(entry)
    return out


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def score(result: dict | None) -> str:
    """``62.5% [55.0, 70.0]``: an accuracy with its 95% interval, in percent."""
    if not result:
        return "-"
    low = result.get("low", result["accuracy"] - result["ci95"])
    high = result.get("high", result["accuracy"] + result["ci95"])
    return f"{_pct(result['accuracy'])} [{100 * low:.1f}, {100 * high:.1f}]"


def difference(entry: dict, baseline: str) -> str:
    """``+12.5 pts ± 4.0``: the meta-learner minus ``baseline`` on the same episodes (95% interval)."""
    paired = entry.get("paired", {}).get(baseline)
    if paired is None:
        return "-"
    return f"{100 * paired['difference']:+.1f} pts ± {100 * paired['ci95']:.1f}"


def aliases_text(summary: dict, name: str) -> str:
    """``champion v2, challenger v3`` of registry model ``name`` after the run (``-`` when not read)."""
    aliases = summary.get("registry", {}).get(name)
    if aliases is None:
        return "-"
    return (f"champion {'v%s' % aliases['champion'] if aliases.get('champion') is not None else 'none'}, "
            f"challenger {'v%s' % aliases['challenger'] if aliases.get('challenger') is not None else 'none'}")


def _role(summary: dict, published: dict) -> str:
    """What the version this run published (or found) is now: champion, challenger or neither."""
    aliases = summary.get("registry", {}).get(published.get("name"))
    if aliases is None:
        return ""
    for alias in ("champion", "challenger"):
        if aliases.get(alias) == published.get("version"):
            return alias
    return "no alias"


def validation_text(summary: dict) -> str:
    v = summary["validation"]
    if v["success"]:
        return f"validation passed; {v['rows_quarantined']} rows quarantined"
    return (f"validation FAILED (critical: {', '.join(v['critical_failures'])}); {v['rows_quarantined']} rows "
            "quarantined; nothing was trained or published")


def trained_models(summary: dict) -> list[dict]:
    """The models the run trained (or found) and published: the pipeline's, and an arrival's first
    models and warm starts (an entry with ``parent``: warm-started from that version)."""
    return summary.get("models", []) + [w for w in summary.get("warm_starts", []) if "published" in w]


def _how_trained(m: dict) -> str:
    how = "trained" if m["trained"] else "unchanged"
    if m.get("parent"):
        how = f"warm-started from {m['parent']}, {how}"
    return how


def arrival_lines(summary: dict) -> list[str]:
    """What an arrival found and did before any training: new classes, grown ones, warm starts skipped."""
    if summary.get("kind") != "arrival":
        return []
    lines = []
    for t in summary.get("tasksets", []):
        grown = ", ".join(f"{c} {g['before']}->{g['after']}" for c, g in t.get("grown_classes", {}).items())
        lines.append(f"arrival on {t.get('taskset', t.get('name', '?'))}: champion {t.get('champion') or 'none'}; "
                     f"new classes {', '.join(t.get('new_classes', [])) or 'none'}; "
                     f"known classes with new cases {grown or 'none'}")
    if "adapted_published_after_s" in summary:
        lines.append(f"the first adapted model was published {duration(summary['adapted_published_after_s'])} "
                     "into the run")
    lines += [f"warm start on {w['taskset']}: none ({w['skipped']})" for w in summary.get("warm_starts", [])
              if "skipped" in w]
    return lines


def model_lines(summary: dict) -> list[str]:
    lines = []
    for m in trained_models(summary):
        published = m["published"]
        best = max(m["evaluation"], key=lambda e: e["shots"])
        role = _role(summary, published)
        lines.append(
            f"{m['algorithm']} on {m['taskset']} ({_how_trained(m)}, {m['steps']} steps, "
            f"{m['device']}): {best['shots']}-shot accuracy {score(best.get('meta'))}, "
            f"from scratch {score(best.get('from_scratch'))} (meta {difference(best, 'from_scratch')}), "
            f"pretrain+fine-tune {score(best.get('pretrain_finetune'))} (meta "
            f"{difference(best, 'pretrain_finetune')}) -> {published['ref']} (gate: {published['decision']}"
            f"{', already published' if published.get('cached') else ''}{f'; now {role}' if role else ''})")
    return lines


def adapted_lines(summary: dict) -> list[str]:
    lines = []
    for a in summary.get("adapted", []):
        if "skipped" in a:
            lines.append(f"adapt {a['taskset']} to {a.get('target', 'its rare classes')}: skipped ({a['skipped']})")
        elif a.get("decision") == "retired":
            lines.append(f"retired {a['name']} ({'already' if a['cached'] else 'now'}): {a['reason']}")
        else:
            support = ", ".join(f"{c} {n}" for c, n in a["support"].items())
            alias = a.get("alias") or "no alias"
            lines.append(f"adapted {a['parent']} to {a['target']} (support {support}) -> {a['ref']}, {alias}"
                         f"{' (already published)' if a['cached'] else ''}; {a.get('estimate', '')}")
    return lines


def registry_lines(summary: dict) -> list[str]:
    """``registry NAME: champion v2, challenger v3`` per model this run published, read back after it."""
    return [f"registry {name}: {aliases_text(summary, name)}" for name in summary.get("registry", {})]


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.1f} s" if seconds < 120 else f"{int(seconds // 60)} min {seconds % 60:02.0f} s"


def stages_text(summary: dict) -> str:
    """``stages: ingest-2026-12-04T07-45 12.3 s, validate-2026-12-04T07-45 4.1 s (within ingest-…), ...;
    total 3 min 02 s``: each stage by its flow run's name."""
    stages = summary.get("stages")
    if not stages:
        return f"stages: durations not recorded{' (' + summary['stages_error'] + ')' if 'stages_error' in summary else ''}"
    parts = [f"{s['run']} {duration(s['seconds'])}" + (f" (within {s['within']})" if s.get("within") else "")
             for s in stages]
    return "stages: " + ", ".join(parts) + f"; total {duration(summary.get('seconds'))}"


def summary_text(summary: dict) -> str:
    i = summary["ingest"]
    lines = [f"ingest: {i['files_seen']} files ({i['files_ingested']} ingested, {i['files_unchanged']} unchanged, "
             f"{i['files_quarantined']} quarantined); {i['patients']} patients, {i['images']} images; "
             f"snapshot {i['snapshot']}",
             validation_text(summary)]
    for t in summary["tasksets"]:
        unit = "tasks" if t.get("kind") == "target" else "classes"
        lines.append(f"task set {t['name']}: " + ", ".join(f"{s} {len(c['classes'])} {unit}"
                                                           for s, c in t["splits"].items()))
    lines += model_lines(summary) + compound_lines(summary.get("compound_models", [])) + adapted_lines(summary)
    lines += registry_lines(summary)
    if "stages" in summary or "stages_error" in summary:
        lines.append(stages_text(summary))
    return "\n".join(lines)


def log_lines(summary: dict) -> list[str]:
    """What the pipeline logs at its end, one answer a line: validation, each model against the
    baselines, champion and challenger per model, stage durations."""
    lines = [validation_text(summary)] + arrival_lines(summary) + model_lines(summary)
    lines += compound_lines(summary.get("compound_models", [])) + adapted_lines(summary)
    return lines + registry_lines(summary) + [stages_text(summary)]


def pipeline_markdown(summary: dict, images: dict[str, str] | None = None) -> str:
    """The pipeline run's summary artifact. ``images``: ``{title: Markdown image}`` shown at its end
    (the training curves: ``tasks.training.png_markdown``)."""
    i, v = summary["ingest"], summary["validation"]
    verdict = ("**passed**" if v["success"] else
               f"**FAILED**: critical expectations {', '.join(f'`{c}`' for c in v['critical_failures'])}; "
               "nothing was trained or published")
    out = [f"# medmeta {summary.get('kind', 'pipeline')} run", "",
           f"- **validation** {verdict}; {v['rows_quarantined']} rows quarantined",
           f"- **snapshot** `{i['snapshot']}`: {i['files_seen']} files, {i['files_ingested']} ingested, "
           f"{i['files_unchanged']} unchanged, {i['files_quarantined']} quarantined"]
    if "seconds" in summary:
        out.append(f"- **took** {duration(summary['seconds'])}")
    arrival = arrival_lines(summary)
    if arrival:
        out += ["", "## What arrived", ""] + [f"- {line}" for line in arrival]
    if trained_models(summary):
        out += ["", "## Models against the baselines", "",
                "Meta-test accuracy with its 95% interval; *meta − baseline*: the paired difference on the same "
                "episodes (95% interval).", "",
                "| model | shots | meta-learner | from scratch | pretrain + fine-tune | meta − from scratch | "
                "meta − pretrain | version | decision | champion / challenger now |",
                "|---|---:|---|---|---|---|---|---|---|---|"]
        for m in trained_models(summary):
            published = m["published"]
            role = _role(summary, published)
            label = f"{m['algorithm']} on {m['taskset']}" + (f" (warm-started from `{m['parent']}`)" if m.get("parent") else "")
            for e in m["evaluation"]:
                out.append(f"| {label} | {e['shots']} | {score(e.get('meta'))} | "
                           f"{score(e.get('from_scratch'))} | {score(e.get('pretrain_finetune'))} | "
                           f"{difference(e, 'from_scratch')} | {difference(e, 'pretrain_finetune')} | "
                           f"`{published['ref']}`{f' ({role})' if role else ''} | {published['decision']} | "
                           f"{aliases_text(summary, published.get('name'))} |")
    out += compound_markdown(summary.get("compound_models", []))
    if summary.get("registry"):
        out += ["", "## Registry after the run", "", "| model | champion | challenger |", "|---|---|---|"]
        for name, aliases in summary["registry"].items():
            out.append(f"| `{name}` | {_version(aliases.get('champion'))} | {_version(aliases.get('challenger'))} |")
    adapted = adapted_lines(summary)
    if adapted:
        out += ["", "## Adapted models", ""] + [f"- {line}" for line in adapted]
    if summary.get("stages") or "stages_error" in summary:
        out += ["", "## Stages", ""]
        if summary.get("stages"):
            out += ["| stage | run | state | took |", "|---|---|---|---:|"]
            out += [f"| {_stage_label(s)} | `{s['run']}` | {s.get('state') or '-'} | {duration(s['seconds'])} |"
                    for s in summary["stages"]]
        else:
            out.append(f"durations not recorded: {summary['stages_error']}")
    for title, image in (images or {}).items():
        out += ["", f"## {title}", "", image]
    return "\n".join(out) + "\n"


def _stage_label(stage: dict) -> str:
    return stage["stage"] + (f" (within `{stage['within']}`)" if stage.get("within") else "")


def _version(version: int | None) -> str:
    return "none" if version is None else f"v{version}"
