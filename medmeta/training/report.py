"""A pipeline run in words: the Markdown artifact and the lines `medmeta run` prints."""

from __future__ import annotations


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def model_lines(summary: dict) -> list[str]:
    lines = []
    for m in summary["models"]:
        published = m["published"]
        best = max(m["evaluation"], key=lambda e: e["shots"])
        meta, scratch, pre = best["meta"], best["from_scratch"], best["pretrain_finetune"]
        lines.append(
            f"{m['algorithm']} on {m['taskset']} ({'trained' if m['trained'] else 'unchanged'}, {m['steps']} steps, "
            f"{m['device']}): {best['shots']}-shot accuracy {_pct(meta['accuracy'])} ± {_pct(meta['ci95'])}, "
            f"from scratch {_pct(scratch['accuracy'])}, pretrain+fine-tune {_pct(pre['accuracy'])} -> "
            f"{published['ref']} {published['decision']}{' (already published)' if published.get('cached') else ''}")
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


def summary_text(summary: dict) -> str:
    i, v = summary["ingest"], summary["validation"]
    lines = [f"ingest: {i['files_seen']} files ({i['files_ingested']} ingested, {i['files_unchanged']} unchanged, "
             f"{i['files_quarantined']} quarantined); {i['patients']} patients, {i['images']} images; "
             f"snapshot {i['snapshot']}",
             f"validation: {'passed' if v['success'] else 'FAILED: ' + ', '.join(v['critical_failures'])}; "
             f"{v['rows_quarantined']} rows quarantined"]
    for t in summary["tasksets"]:
        lines.append(f"task set {t['name']}: " + ", ".join(f"{s} {len(c['classes'])} classes"
                                                           for s, c in t["splits"].items()))
    lines += model_lines(summary) + adapted_lines(summary)
    return "\n".join(lines)


def pipeline_markdown(summary: dict) -> str:
    i, v = summary["ingest"], summary["validation"]
    out = ["# medmeta pipeline run", "",
           f"- **snapshot** `{i['snapshot']}`: {i['files_seen']} files, {i['files_ingested']} ingested, "
           f"{i['files_unchanged']} unchanged, {i['files_quarantined']} quarantined",
           f"- **validation** {'passed' if v['success'] else 'FAILED'}; {v['rows_quarantined']} rows quarantined", "",
           "| model | shots | meta-learner | from scratch | pretrain + fine-tune | version | decision |",
           "|---|---:|---:|---:|---:|---|---|"]
    for m in summary["models"]:
        for e in m["evaluation"]:
            out.append(f"| {m['algorithm']} on {m['taskset']} | {e['shots']} | {_pct(e['meta']['accuracy'])} ± "
                       f"{_pct(e['meta']['ci95'])} | {_pct(e['from_scratch']['accuracy'])} | "
                       f"{_pct(e['pretrain_finetune']['accuracy'])} | `{m['published']['ref']}` | "
                       f"{m['published']['decision']} |")
    adapted = adapted_lines(summary)
    if adapted:
        out += ["", "## Adapted models", ""] + [f"- {line}" for line in adapted]
    return "\n".join(out) + "\n"
