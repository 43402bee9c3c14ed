"""What people see of a task set: the short JSON summary (CLI, flow result) and the Markdown artifact."""

from __future__ import annotations

SPLIT_ORDER = ("train", "val", "test", "adaptation")


def _ordered(manifest: dict) -> list[str]:
    return [s for s in SPLIT_ORDER if s in manifest["splits"]]


def summarize(manifest: dict, folder: str | None = None) -> dict:
    """name, snapshot, kind, inputs, episode shape, splits (classes, cases), excluded (with reasons), features."""
    record, image = manifest["features"]["record"], manifest["features"]["image"]
    out = {k: manifest[k] for k in ("name", "snapshot", "kind", "inputs", "ways", "shots", "queries", "seed")}
    out["splits"] = {s: {"classes": [c["code"] for c in manifest["splits"][s]["classes"]],
                         "cases": manifest["splits"][s]["cases"],
                         "cases_per_class": {c["code"]: c["cases"] for c in manifest["splits"][s]["classes"]}}
                     for s in _ordered(manifest)}
    out["excluded"] = [{"code": e["code"], "cases": e["cases"], "reason": e["reason"],
                        "adaptation_only": e["adaptation_only"]} for e in manifest["excluded"]]
    classes = manifest.get("classes") or {}
    out["class_system"] = (classes.get("system") or {}).get("short")
    out["label_policy"] = manifest.get("label_policy")
    if "outcomes" in manifest:  # drug tasks: per drug, what the outcome rules found and whether it was usable
        out["outcomes"] = manifest["outcomes"]
    out["features"] = {"record": len(record["names"]) if record else 0,
                       "record_names": record["names"] if record else [],
                       "image_size": image["size"] if image else None}
    if folder:
        out["path"] = folder
    return out


def summary_markdown(manifest: dict) -> str:
    short = summarize(manifest)
    unit = {"drug": "drug", "target": "target task"}.get(manifest["kind"], "disease")
    lines = [f"# Task set `{manifest['name']}`",
             "",
             f"Snapshot `{manifest['snapshot']}`, by {unit}, inputs **{manifest['inputs']}**, "
             f"{manifest['ways']}-way {manifest['shots']}-shot {manifest['queries']}-query, seed {manifest['seed']}.",
             f"Features: {short['features']['record']} record features"
             + (f", images {short['features']['image_size']}" if short["features"]["image_size"] else "") + ".",
             "", f"Label policy: {manifest['label_policy']}.",
             f"Classes: {short['class_system'] or 'codes'}"
             + (f" ({manifest['classes'].get('label_policy_choice')})" if manifest.get("classes", {}).get("label_policy_choice")
                else "") + ".",
             "", "| split | classes | cases | per class |", "|---|---:|---:|---|"]
    for split, entry in short["splits"].items():
        per = ", ".join(f"`{c}` {n}" for c, n in entry["cases_per_class"].items())
        lines.append(f"| {split} | {len(entry['classes'])} | {entry['cases']} | {per} |")
    lines += ["", "## Excluded", ""]
    if short["excluded"]:
        lines += ["| class | cases | adaptation only | reason |", "|---|---:|---|---|"]
        lines += [f"| `{e['code']}` | {e['cases']} | {'yes' if e['adaptation_only'] else 'no'} | {e['reason']} |"
                  for e in short["excluded"]]
    else:
        lines.append("None: every class has enough cases for an episode.")
    if "outcomes" in manifest:
        lines += ["", "## Outcomes per drug", "", "| drug | responders | non-responders | unknown | usable |",
                  "|---|---:|---:|---|---|"]
        lines += [f"| `{code}` | {o['responders']} | {o['non_responders']} | "
                  f"{', '.join(f'{n} {r}' for r, n in o['unknown'].items()) or '-'} | "
                  f"{'yes' if o.get('usable') else 'no'} |" for code, o in manifest["outcomes"].items()]
    return "\n".join(lines) + "\n"
