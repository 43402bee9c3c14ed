"""The ``medmeta`` command line.

Heavy modules (Prefect, pydicom, pandas, Great Expectations) are imported inside the
commands, never at start-up, so ``medmeta --help`` answers at once. With ``--json`` a command
prints exactly one JSON object on stdout; progress and logs go to stderr.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="medmeta: medical data to published few-shot models.")
key_app = typer.Typer(no_args_is_help=True, help="The pseudonym key.")
app.add_typer(key_app, name="key")

HomeOption = typer.Option(None, "--home", help="Where all state lives [default: $MEDMETA_HOME or ./.medmeta].")
JsonOption = typer.Option(False, "--json", help="Print exactly one JSON object on stdout.")
RulesOption = typer.Option(None, "--rules", help="Validation rules (YAML) replacing the defaults per table; see validation/rules.yaml.")


def _emit(result: dict, as_json: bool, human: str) -> None:
    if as_json:
        sys.stdout.write(json.dumps(result, default=str) + "\n")
    else:
        typer.echo(human)


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(2)


def _prefect_environment(home: Path) -> None:
    """Prefect's embedded server keeps its database in the home unless told otherwise."""
    if not os.environ.get("PREFECT_API_URL") and not os.environ.get("PREFECT_HOME"):
        (home / "prefect").mkdir(parents=True, exist_ok=True)
        os.environ["PREFECT_HOME"] = str(home / "prefect")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


@app.command()
def synth(
    out: Path = typer.Option(..., "--out", help="Folder to write the landing data into."),
    patients: int = typer.Option(240, "--patients", min=10),
    seed: int = typer.Option(0, "--seed"),
    faults: bool = typer.Option(False, "--faults", help="Add broken and hostile files of every kind."),
    as_json: bool = JsonOption,
) -> None:
    """Write a synthetic multi-site cohort (CSV, FHIR, Parquet, DICOM), deterministic by seed."""
    from medmeta.synth.generate import generate_cohort

    with _spinner("writing the synthetic cohort"):
        summary = generate_cohort(out, patients=patients, seed=seed, faults=faults)
    summary = {k: v for k, v in summary.items() if not k.startswith("expected") and k != "labels"}
    _emit({"out": str(out), **summary}, as_json,
          f"wrote {summary.get('patients', patients)} patients to {out}")


@app.command()
def ingest(
    source: Path = typer.Argument(..., help="A landing folder or a zip archive."),
    home: Optional[Path] = HomeOption,
    config: Optional[Path] = typer.Option(None, "--config", help="Ingest settings (YAML); see medmeta/config/ingest.yaml."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Decode processes [default: one per core]."),
    rules: Optional[Path] = RulesOption,
    as_json: bool = JsonOption,
) -> None:
    """Ingest, de-identify and harmonise SOURCE into the canonical store, then validate it (Prefect flows)."""
    from medmeta.errors import MedmetaError
    from medmeta.home import Home
    from medmeta.pseudonyms import load_key

    the_home = Home.at(home)
    try:  # the cheap checks, before the embedded Prefect server takes its seconds to start
        if not source.exists():
            raise MedmetaError(f"{source}: no such file or folder")
        load_key(the_home.key_file)
        _check_rules(rules)
    except MedmetaError as error:
        _fail(str(error))
    _prefect_environment(the_home.root)
    from flows.ingest import ingest_flow

    try:
        from medmeta.prefect_runtime import embedded_run_settings

        with _progress() as reporter, embedded_run_settings():
            from medmeta import progress

            progress.set_reporter(reporter)
            summary = ingest_flow(str(source), str(home) if home else None, str(config) if config else None, workers,
                                  rules=str(rules) if rules else None)
    except MedmetaError as error:
        _fail(str(error))
    finally:
        from medmeta import progress

        progress.set_reporter(None)
    human = (
        f"{summary['files_seen']} files: {summary['files_ingested']} ingested, {summary['files_unchanged']} unchanged, "
        f"{summary['files_quarantined']} quarantined; {summary['rows_quarantined']} rows in the snapshot rejected inside good files "
        f"(store/record_quarantine.parquet)\n"
        f"store: {summary['patients']} patients, {summary['records']} records, {summary['images']} images; "
        f"snapshot {summary['snapshot']}"
    )
    for q in summary["quarantined"]:
        human += f"\n  quarantined {q['path']}: {q['reason']}"
    from validation.report import summary_line

    human += "\n" + summary_line(summary["validation"])
    _emit(summary, as_json, human)


@app.command()
def validate(
    home: Optional[Path] = HomeOption,
    rules: Optional[Path] = RulesOption,
    as_json: bool = JsonOption,
) -> None:
    """Validate the current snapshot with Great Expectations; exit 1 when a critical expectation fails."""
    from medmeta.errors import MedmetaError
    from medmeta.home import Home

    the_home = Home.at(home)
    try:
        _check_rules(rules)
    except MedmetaError as error:
        _fail(str(error))
    _prefect_environment(the_home.root)
    from flows.validate import validate_flow
    from medmeta.prefect_runtime import embedded_run_settings

    try:
        with _spinner("validating the snapshot"), embedded_run_settings():
            result = validate_flow(str(the_home.root), str(rules) if rules else None)
    except MedmetaError as error:
        _fail(str(error))
    from validation.report import digest, summary_line

    short = digest(result)
    summary = {k: result[k] for k in ("snapshot", "success", "rows_checked", "rows_quarantined", "label_coverage",
                                      "data_docs")}
    for key in ("critical_failures", "warnings"):
        summary[key] = [{"table": r["table"], "expectation": r["rule"], "unexpected_count": r["unexpected_count"]}
                        for r in result[key]]
    _emit(summary, as_json, f"snapshot {result['snapshot']}: {summary_line(short)}")
    if not result["success"]:
        typer.secho(f"error: validation failed: critical expectations {', '.join(short['critical_failures'])}",
                    err=True, fg=typer.colors.RED)
        raise typer.Exit(1)


def _check_rules(rules: Optional[Path]) -> None:
    """Load the rules file now (no GX import), so a bad one fails before anything starts."""
    from validation.rules import load_rules

    load_rules(rules)


@key_app.command("create")
def key_create(home: Optional[Path] = HomeOption, as_json: bool = JsonOption) -> None:
    """Create the home's pseudonym key file (random, readable by its owner only)."""
    from medmeta.home import Home
    from medmeta.pseudonyms import Pseudonymizer, create_key_file, load_key

    the_home = Home.at(home)
    created = create_key_file(the_home.key_file)
    fingerprint = Pseudonymizer(load_key(the_home.key_file)).fingerprint
    _emit({"key_file": str(the_home.key_file), "created": created, "fingerprint": fingerprint}, as_json,
          f"{'created' if created else 'kept the existing'} {the_home.key_file} (fingerprint {fingerprint})")


# -- task sets (`medmeta tasks ...`) -------------------------------------------------------------

tasks_app = typer.Typer(no_args_is_help=True, help="Few-shot task sets built from the validated snapshot.")
app.add_typer(tasks_app, name="tasks")


@tasks_app.command("build")
def tasks_build(
    by: str = typer.Option(..., "--by", help="disease (classes are ICD-10-CM codes) or drug (one binary response task per ATC code)."),
    inputs: Optional[str] = typer.Option(None, "--inputs", help="images, records or both [default: images for disease, records for drug]."),
    ways: Optional[int] = typer.Option(None, "--ways", help="Classes per episode [default: 3; drug: 2]."),
    shots: Optional[int] = typer.Option(None, "--shots", help="Support cases per class [default: 5]."),
    queries: Optional[int] = typer.Option(None, "--queries", help="Query cases per class [default: 3; drug: 5]."),
    seed: int = typer.Option(0, "--seed", help="Seeds the split of classes into meta-train/val/test."),
    name: Optional[str] = typer.Option(None, "--name", help="[default: <by>-<inputs>-<W>w<K>s<Q>q-seed<S>]"),
    home: Optional[Path] = HomeOption,
    as_json: bool = JsonOption,
) -> None:
    """Build a task set from the current snapshot (refused when its validation failed); a Prefect flow."""
    from medmeta.errors import MedmetaError
    from medmeta.home import Home
    from medmeta.tasksets.build import plan_taskset
    from medmeta.tasksets.spec import make_spec

    the_home = Home.at(home)
    try:  # the gate, the cases and the split (a second or less), before the embedded Prefect server starts
        plan_taskset(the_home, make_spec(by, inputs, ways, shots, queries, seed, name))
    except MedmetaError as error:
        _fail(str(error))
    _prefect_environment(the_home.root)
    from flows.tasksets import build_tasksets_flow
    from medmeta.prefect_runtime import embedded_run_settings

    try:
        with _spinner("building the task set"), embedded_run_settings():
            summary = build_tasksets_flow(by, inputs, ways, shots, queries, seed, name, str(the_home.root))
    except MedmetaError as error:
        _fail(str(error))
    human = [f"task set {summary['name']} from snapshot {summary['snapshot']} ({summary['path']})"]
    unit = "drugs" if summary["kind"] == "drug" else "diseases"
    human += [f"  {split}: {len(e['classes'])} {unit}, {e['cases']} cases ({', '.join(e['classes'])})"
              for split, e in summary["splits"].items()]
    human += [f"  excluded {e['code']}: {e['reason']}" for e in summary["excluded"]]
    _emit(summary, as_json, "\n".join(human))


@tasks_app.command("list")
def tasks_list(home: Optional[Path] = HomeOption, as_json: bool = JsonOption) -> None:
    """The task sets in the home."""
    from medmeta.home import Home
    from medmeta.tasksets.store import list_tasksets
    from medmeta.tasksets.summary import summarize

    summaries = [summarize(m) for m in list_tasksets(Home.at(home))]
    human = "\n".join(f"{s['name']}: {s['kind']} / {s['inputs']}, {s['ways']}-way {s['shots']}-shot, snapshot "
                      f"{s['snapshot']}, " + ", ".join(f"{k} {len(v['classes'])}" for k, v in s["splits"].items())
                      for s in summaries) or "no task sets"
    _emit({"tasksets": summaries}, as_json, human)


class _progress:
    """A rich progress bar on stderr fed by ``medmeta.progress`` reports."""

    def __enter__(self):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                             console=Console(stderr=True), transient=True)
        self._tasks: dict[str, int] = {}
        self._bar.__enter__()
        return self.report

    def report(self, stage: str, advance: int = 0, total: int | None = None) -> None:
        if stage not in self._tasks:
            self._tasks[stage] = self._bar.add_task(stage, total=total)
        self._bar.update(self._tasks[stage], advance=advance, **({"total": total} if total is not None else {}))

    def __exit__(self, *exc):
        return self._bar.__exit__(*exc)


def _spinner(text: str):
    from rich.console import Console

    return Console(stderr=True).status(text)


def main() -> None:
    from medmeta.errors import MedmetaError

    try:
        app()
    except MedmetaError as error:
        typer.secho(f"error: {error}", err=True, fg=typer.colors.RED)
        sys.exit(2)


if __name__ == "__main__":
    main()
