"""The ``medmeta`` command line.

Heavy modules (Prefect, pydicom, pandas, Great Expectations) are imported inside the
commands, never at start-up, so ``medmeta --help`` answers at once. With ``--json`` a command
prints exactly one JSON object on stdout; progress and logs go to stderr.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import typer

from medmeta.predict.cases import DEFAULT_MAX_INPUT_BYTES, MAX_INPUT_BYTES_ENV

app = typer.Typer(add_completion=False, no_args_is_help=True, help="medmeta: medical data to published few-shot models.")
key_app = typer.Typer(no_args_is_help=True, help="The pseudonym key.")
app.add_typer(key_app, name="key")

HomeOption = typer.Option(None, "--home", help="Where all state lives [default: $MEDMETA_HOME or ./.medmeta].")
JsonOption = typer.Option(False, "--json", help="Print exactly one JSON object on stdout.")
RulesOption = typer.Option(None, "--rules", help="Validation rules (YAML) replacing the defaults per table; see validation/rules.yaml [default: the settings' validation.rules].")
ConfigOption = typer.Option(None, "--config", help="Settings (YAML) over medmeta/config/pipeline.yaml: keys left out keep "
                                                  "their defaults; the same file for every command.")


def _emit(result: dict, as_json: bool, human: str) -> None:
    if as_json:
        sys.stdout.write(json.dumps(result, default=str) + "\n")
    else:
        typer.echo(human)


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(2)


_HOME: list[Path] = []  # the home the running command writes, named by a fault's line (main)


def _prefect_environment(home: Path) -> None:
    """Prefect's embedded server keeps its database in the home unless told otherwise; the caches of
    matplotlib, torch and other libraries stay in the home too (``medmeta.tool_caches``).

    A home that can not take a file (read-only, full) is refused here, before Prefect starts.
    """
    from medmeta.errors import check_writable
    from medmeta.tool_caches import keep_caches_in

    _HOME[:] = [home]
    check_writable(home)
    keep_caches_in(home)
    if not os.environ.get("PREFECT_API_URL") and not os.environ.get("PREFECT_HOME"):
        (home / "prefect").mkdir(parents=True, exist_ok=True)
        os.environ["PREFECT_HOME"] = str(home / "prefect")
    if not os.environ.get("PREFECT_API_URL"):  # leases on disk: a killed run's training slot is given back
        from tasks.concurrency import FILESYSTEM_LEASES

        os.environ.setdefault("PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE", FILESYSTEM_LEASES)
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


@app.command()
def synth(
    out: Path = typer.Option(..., "--out", help="Folder to write the landing data into."),
    patients: int = typer.Option(240, "--patients", min=10),
    seed: int = typer.Option(0, "--seed"),
    faults: bool = typer.Option(False, "--faults", help="Add broken and hostile files of every kind."),
    diseases: Optional[int] = typer.Option(None, "--diseases",
                                           help="How many of the catalogue's diseases the patients have: the 15 "
                                                "common ones [default], then up to 30 rarer ones."),
    as_json: bool = JsonOption,
) -> None:
    """Write a synthetic multi-site cohort (CSV, FHIR, Parquet, DICOM), deterministic by seed."""
    from medmeta.synth.generate import generate_cohort

    with _spinner("writing the synthetic cohort"):
        summary = generate_cohort(out, patients=patients, seed=seed, faults=faults,
                                  **({} if diseases is None else {"diseases": diseases}))
    summary = {k: v for k, v in summary.items() if not k.startswith("expected") and k != "labels"}
    _emit({"out": str(out), **summary}, as_json,
          f"wrote {summary.get('patients', patients)} patients to {out}")


@app.command()
def ingest(
    source: Path = typer.Argument(..., help="A landing folder or a zip archive."),
    home: Optional[Path] = HomeOption,
    config: Optional[Path] = ConfigOption,
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Decode processes [default: one per core]."),
    rules: Optional[Path] = RulesOption,
    dask: Optional[str] = typer.Option(None, "--dask", metavar="ADDRESS",
                                       help="Decode on this Dask scheduler's workers (tcp://host:8786) "
                                            "[default: ingest.dask_address, $MEDMETA_DASK_ADDRESS, else local]."),
    as_json: bool = JsonOption,
) -> None:
    """Ingest, de-identify and harmonise SOURCE into the canonical store, then validate it (Prefect flows)."""
    from medmeta.errors import MedmetaError
    from medmeta.home import Home
    from medmeta.store_version import check_store_version

    the_home = Home.at(home)
    try:  # the cheap checks, before the embedded Prefect server takes its seconds to start
        if not source.exists():
            raise MedmetaError(f"{_shown(source)}: no such file or folder")
        _check_key(the_home)
        check_store_version(the_home)
        settings = _settings(config)
        rules = _rules(rules, settings)
        _check_dask(settings, dask)
    except MedmetaError as error:
        _fail(str(error))
    _prefect_environment(the_home.root)
    _warm_ingest_workers()
    from flows.ingest import ingest_flow

    try:
        with _progress() as reporter, _running():
            from medmeta import progress

            progress.set_reporter(reporter)
            summary = ingest_flow(str(source), str(home) if home else None, settings, workers, rules=rules,
                                  dask_address=dask)
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
    summary = {**summary, "quarantined": _quarantined_with_names(summary["quarantined"])}
    human += "".join(f"\n  {line}" for line in _quarantined_lines(summary["quarantined"]))
    from validation.report import summary_line

    human += "\n" + summary_line(summary["validation"])
    _emit(summary, as_json, human)


def _check_dask(settings, dask: Optional[str]) -> None:
    """A Dask ingest needs a Prefect server its workers reach and a scheduler that answers: refused
    before Prefect starts."""
    from medmeta.errors import MedmetaError
    from medmeta.ingest.config import IngestConfig

    address = IngestConfig.from_settings(settings, dask_address=dask).dask_address
    if address:
        from medmeta.ingest.dask_engine import NO_PREFECT_SERVER, check_reachable

        if not os.environ.get("PREFECT_API_URL"):
            raise MedmetaError(NO_PREFECT_SERVER)
        check_reachable(address)  # the flow checks again, and the workers, once Prefect is up


def _shown(path: Path | str) -> str:
    """A path as the terminal may show it (``display_name``: no control character, no escape sequence)."""
    from medmeta.landing.names import display_name

    return display_name(str(path))


def _quarantined_with_names(quarantined: list[dict]) -> list[dict]:
    """The summary's quarantined files (tokens) with their names for the terminal, escaped; only ever
    printed, never written: the flow's summary and the run file hold the tokens alone."""
    from medmeta.ingest.summary import quarantined_names

    return [{"path": _shown(q["path"]) if q["path"] is not None else None, "token": q["token"], "reason": q["reason"]}
            for q in quarantined_names({"quarantined": quarantined})]


def _quarantined_lines(quarantined: list[dict]) -> list[str]:
    return [f"quarantined {q['path'] or 'the file with token ' + q['token']}: {q['reason']}" for q in quarantined]


@app.command()
def validate(
    home: Optional[Path] = HomeOption,
    config: Optional[Path] = ConfigOption,
    rules: Optional[Path] = RulesOption,
    as_json: bool = JsonOption,
) -> None:
    """Validate the current snapshot with Great Expectations; exit 1 when a critical expectation fails."""
    from medmeta.errors import MedmetaError
    from medmeta.home import Home

    the_home = Home.at(home)
    try:
        rules = _rules(rules, _settings(config))
        from validation.gate import current_snapshot

        current_snapshot(the_home)  # a snapshot to validate, of a store this medmeta reads
        _check_key(the_home)  # it keys the masks of failing values (medmeta/records/masking.py)
    except MedmetaError as error:
        _fail(str(error))
    _prefect_environment(the_home.root)
    from flows.validate import validate_flow
    try:
        with _spinner("validating the snapshot"), _running():
            result = validate_flow(str(the_home.root), rules)
    except MedmetaError as error:
        _fail(str(error))
    from validation.report import digest, summary_line

    short = digest(result)
    summary = {k: result[k] for k in ("snapshot", "success", "rows_checked", "rows_quarantined", "label_coverage",
                                      "data_docs")}
    summary.update(require=result.get("require"), empty_tables=result.get("empty_tables", []))
    for key in ("critical_failures", "warnings"):
        summary[key] = [{"table": r["table"], "expectation": r["rule"], "unexpected_count": r["unexpected_count"]}
                        for r in result[key]]
    _emit(summary, as_json, f"snapshot {result['snapshot']}: {summary_line(short)}")
    if not result["success"]:
        typer.secho(f"error: validation failed: critical expectations {', '.join(short['critical_failures'])}",
                    err=True, fg=typer.colors.RED)
        raise typer.Exit(1)


def _warm_ingest_workers() -> None:
    """Boot the ingest's forkserver while Prefect's API starts, so its workers fork warm."""
    from medmeta.ingest.pool import start_forkserver

    start_forkserver()


PipelineConfigOption = ConfigOption


def _settings(config: Optional[Path]):
    """The settings (``medmeta.settings.Settings``), read once here, where the command starts: a bad
    file is one line naming the file and the key, before Prefect starts."""
    from medmeta.errors import MedmetaError
    from medmeta.settings import load_settings

    if config is not None and not config.is_file():
        raise MedmetaError(f"{_shown(config)}: no such settings file")
    return load_settings(config)


def _rules(rules: Optional[Path], settings) -> Optional[str]:
    """The validation rules file: ``--rules``, else the settings' ``validation.rules``; loaded now (no GX
    import), so a bad one fails before anything starts."""
    chosen = str(rules) if rules is not None else settings.validation["rules"]
    _check_rules(Path(chosen) if chosen else None)
    return chosen


def _check_key(the_home) -> None:
    """The pseudonym key is there and long enough (``Pseudonymizer`` checks its length)."""
    from medmeta.pseudonyms import Pseudonymizer, load_key

    Pseudonymizer(load_key(the_home.key_file))


def _run_stage(home: Optional[Path], config: Optional[Path], what: str, call, check=None):
    """Run a stage flow with the settings read once here; ``check(home)`` first (the task set or model
    it needs is there), before Prefect starts. MedmetaError -> one line, exit 2."""
    from medmeta.errors import MedmetaError
    from medmeta.home import Home

    the_home = Home.at(home)
    try:
        settings = _settings(config)
        if check is not None:
            check(the_home)
    except MedmetaError as error:
        _fail(str(error))
    _prefect_environment(the_home.root)
    try:
        with _spinner(what), _running():
            return call(str(the_home.root), settings)
    except MedmetaError as error:
        _fail(str(error))


def _taskset_exists(name: str):
    def check(the_home) -> None:
        from medmeta.tasksets.store import read_manifest

        read_manifest(the_home, name)

    return check


def _model_exists(name: str):
    def check(the_home) -> None:
        from medmeta.training.runs import require_model

        require_model(the_home, name)

    return check


@app.command()
def train(
    taskset: str = typer.Option(..., "--taskset", help="A task set name (medmeta tasks list)."),
    algo: str = typer.Option(..., "--algo", help="maml, fomaml, reptile, protonet or matchingnet."),
    home: Optional[Path] = HomeOption,
    config: Optional[Path] = PipelineConfigOption,
    nproc: Optional[int] = typer.Option(None, "--nproc", help="Training processes (torchrun ranks, gloo on CPU, NCCL on CUDA); default: the settings' train.nproc or MEDMETA_TRAIN_NPROC."),
    as_json: bool = JsonOption,
) -> None:
    """Meta-train ALGO on a task set (Prefect flow; resumes from its checkpoint after a crash)."""
    from medmeta.errors import MedmetaError
    from medmeta.training.settings import ALGORITHMS

    if algo not in ALGORITHMS:
        _fail(f"--algo must be one of {', '.join(ALGORITHMS)}, got {algo!r}")
    if nproc is not None:
        from medmeta.training.ranked import check_nproc

        try:
            device = str(_settings(config).train["device"])
        except MedmetaError:
            device = "auto"  # the stage below names what is wrong with the settings
        try:
            check_nproc(nproc, device)
        except MedmetaError as error:
            _fail(f"--nproc: {error}")

    def call(root, settings):
        from flows.train import train_flow

        return train_flow(taskset, algo, root, settings, nproc)

    result = _run_stage(home, config, f"training {algo} on {taskset}", call, _taskset_exists(taskset))
    _emit(result, as_json, f"{'found' if result['cached'] else 'trained'} {result['model']}: {result['steps']} steps "
                           f"({result['stop_reason']}) on {result['device']} in {result['seconds']:.1f} s")


@app.command()
def evaluate(
    model: str = typer.Argument(..., help="A trained model (the name `medmeta train` printed)."),
    home: Optional[Path] = HomeOption,
    config: Optional[Path] = PipelineConfigOption,
    nproc: Optional[int] = typer.Option(None, "--nproc", help="Evaluation processes (torchrun ranks, gloo, on CPU; each scores a share of the episodes, the same numbers as one); default: the settings' train.nproc or MEDMETA_TRAIN_NPROC."),
    as_json: bool = JsonOption,
) -> None:
    """Meta-test accuracy with 95% intervals, next to the from-scratch and pretrain+fine-tune baselines."""
    if nproc is not None:
        from medmeta.errors import MedmetaError
        from medmeta.training.ranked import check_nproc

        try:
            check_nproc(nproc, "cpu", job="evaluation")  # the ranks evaluate on CPU
        except MedmetaError as error:
            _fail(f"--nproc: {error}")

    def call(root, settings):
        from flows.evaluate import evaluate_flow

        return evaluate_flow(model, root, settings, nproc)

    evaluation = _run_stage(home, config, f"evaluating {model}", call, _model_exists(model))
    from medmeta.training.evaluate import evaluation_rows

    human = "\n".join(f"{r['shots']}-shot {r['method']:<18} {r['accuracy']:.3f} {r['ci95']}  {r['meta minus this']}"
                      for r in evaluation_rows(evaluation))
    _emit(evaluation, as_json, human)


@app.command()
def publish(
    model: str = typer.Argument(..., help="A trained and evaluated model."),
    home: Optional[Path] = HomeOption,
    config: Optional[Path] = PipelineConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Publish a new immutable registry version (safetensors + model card) through the champion gate."""

    def call(root, settings):
        from flows.publish import publish_flow

        return publish_flow(model, root, settings)

    published = _run_stage(home, config, f"publishing {model}", call, _model_exists(model))
    _emit(published, as_json, f"{published['ref']}: {published['decision']} ({published['reason']}); card {published['card']}")


@app.command("run")
def run_pipeline(
    landing: Path = typer.Argument(..., help="The landing folder (or zip) to ingest."),
    home: Optional[Path] = HomeOption,
    config: Optional[Path] = PipelineConfigOption,
    rules: Optional[Path] = RulesOption,
    as_json: bool = JsonOption,
) -> None:
    """The whole pipeline once: ingest, validate, task sets, train, evaluate, publish (exit 1 if validation fails)."""
    from medmeta.errors import MedmetaError
    from medmeta.home import Home

    the_home = Home.at(home)
    try:
        if not landing.exists():
            raise MedmetaError(f"{_shown(landing)}: no such file or folder")
        _check_key(the_home)
        settings = _settings(config)
        rules = _rules(rules, settings)
    except MedmetaError as error:
        _fail(str(error))
    _prefect_environment(the_home.root)
    _warm_ingest_workers()
    from flows.pipeline import pipeline_flow
    from medmeta.training.report import summary_text

    from prefect.exceptions import TerminationSignal

    from medmeta.prefect_runtime import Stopped, stopped_by_signals

    try:
        with stopped_by_signals(), _spinner("running the pipeline"), _running():
            state = pipeline_flow(str(landing), str(the_home.root), settings, rules, return_state=True)
    except MedmetaError as error:
        _fail(str(error))
    except (Stopped, TerminationSignal) as stopped:  # inside a flow Prefect's own SIGTERM handler raises the latter
        stopped = stopped if isinstance(stopped, Stopped) else Stopped(stopped.signal)
        typer.secho(f"stopped by {stopped}: the pipeline did not finish", err=True, fg=typer.colors.RED)
        raise typer.Exit(stopped.exit_code)  # the embedded server stops at exit (atexit), its runs marked Crashed
    summary = state.result(raise_on_failure=False)
    if isinstance(summary, BaseException):
        _fail_run(summary, the_home.root)
    if not isinstance(summary, dict):  # the flow crashed before it had a summary
        _fail(f"the pipeline failed: {state.message or summary}")
    quarantined = _quarantined_with_names(summary["ingest"].get("quarantined", []))
    summary = {**summary, "ingest": {**summary["ingest"], "quarantined": quarantined}}
    first, *rest = summary_text(summary).split("\n")  # the ingest line, then the files it quarantined
    human = "\n".join([first, *(f"  {line}" for line in _quarantined_lines(quarantined)), *rest])
    _emit({**summary, "state": state.type.value, "message": state.message}, as_json, human)
    if not state.is_completed():
        typer.secho(f"error: {state.message}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1)


@app.command()
def serve(
    landing: Path = typer.Option(..., "--landing", help="The landing folder the watcher looks at and the pipeline ingests."),
    home: Optional[Path] = HomeOption,
    config: Optional[Path] = ConfigOption,
    cron: Optional[str] = typer.Option(None, "--cron", help="When the nightly pipeline runs [default: the settings' serve.cron, 0 2 * * *]."),
    timezone: Optional[str] = typer.Option(None, "--timezone", help="The cron schedule's time zone (IANA name) [default: serve.timezone, UTC]."),
    watch_every: Optional[int] = typer.Option(None, "--watch-every", min=1, help="Seconds between looks when the watcher polls (inotify needs none) [default: serve.watch_every, 30]."),
    watch_polling: bool = typer.Option(False, "--watch-polling",
                                       help="Poll the landing folder instead of inotify (e.g. a network file system)."),
) -> None:
    """Serve the nightly and on-new-cases deployments and watch the landing folder (needs PREFECT_API_URL).
    SIGTERM or Ctrl-C stops it cleanly: schedules paused, unfinished runs cancelled, exit 0."""
    from medmeta.errors import MedmetaError
    from medmeta.home import Home

    the_home = Home.at(home)
    try:
        if not landing.is_dir():
            raise MedmetaError(f"{_shown(landing)}: the landing folder does not exist")
        from medmeta.tool_caches import keep_caches_in

        keep_caches_in(the_home.root)  # the served flows run in children of this process

        _check_key(the_home)
        settings = _settings(config.resolve() if config else None)
        typer.echo(_settings_line(settings, config), err=True)
        from deployments.definitions import ServeSettings
        from deployments.serve import serve as serve_deployments

        serve_deployments(ServeSettings(landing=str(landing.resolve()), home=str(the_home.root.resolve()),
                                        settings=settings, cron=cron or settings.serve["cron"],
                                        timezone=timezone or settings.serve["timezone"],
                                        watch_every_s=watch_every or settings.serve["watch_every"],
                                        watch_polling=watch_polling))
    except MedmetaError as error:
        _fail(str(error))


@app.command()
def journal(
    landing: Path = typer.Option(..., "--landing", help="The landing folder whose changes the journal keeps."),
    home: Optional[Path] = HomeOption,
) -> None:
    """Keep the landing folder's change journal (inotify) until SIGTERM or Ctrl-C, as `medmeta serve` does
    beside its watcher: ingest runs then skip the stat of each file in the folders nothing touched since the
    last run. For a home ingested by hand or by cron without `medmeta serve`."""
    from medmeta.errors import MedmetaError
    from medmeta.home import Home

    the_home = Home.at(home)
    try:
        if not landing.is_dir():
            raise MedmetaError(f"{_shown(landing)}: the landing folder does not exist")
        _check_key(the_home)
        from medmeta.landing.journal import keep

        keep(landing, the_home.root, lambda line: typer.echo(line, err=True))
    except MedmetaError as error:
        _fail(str(error))


def _settings_line(settings, config: Optional[Path]) -> str:
    """What `medmeta serve` says at start: which settings its deployments run with."""
    train, evaluate = settings.train, settings.evaluate
    numbers = (f"{train['steps']} training steps, {evaluate['episodes']} meta-test episodes, "
               f"algorithms {', '.join(train['algorithms'])}")
    if config is None:
        return (f"settings: the defaults, medmeta/config/pipeline.yaml ({numbers}); pass --config FILE to change "
                "them (medmeta/config/pipeline-demo.yaml: the demo's lighter ones)")
    return f"settings: {settings.source} over medmeta/config/pipeline.yaml ({numbers})"


@app.command()
def server(
    home: Optional[Path] = HomeOption,
    port: int = typer.Option(4200, "--port", help="Port on 127.0.0.1."),
    database: Optional[str] = typer.Option(
        None, "--database", show_default=False,
        help="PostgreSQL for the server's database, postgresql+asyncpg://USER:PASSWORD@HOST:PORT/DATABASE; "
             "by default $MEDMETA_DATABASE_URL (it keeps the password out of the process list), else SQLite in H/prefect."),
) -> None:
    """Start a Prefect server on 127.0.0.1 (database SQLite in H/prefect, or PostgreSQL); then export PREFECT_API_URL."""
    from deployments.server import check_database, database_from, run_server
    from medmeta.errors import MedmetaError
    from medmeta.home import Home

    try:  # before anything is written to the home: a database that does not answer is one line
        postgres = database_from(database)
        if postgres is not None:
            check_database(postgres)
    except MedmetaError as error:
        _fail(str(error))
    the_home = Home.at(home)
    sqlite_home = os.environ.get("PREFECT_HOME") or the_home.root / "prefect"  # deployments.server_environment
    where = f"PostgreSQL {postgres.shown}" if postgres else f"SQLite in {_shown(sqlite_home)}"
    typer.echo(f"Prefect server on http://127.0.0.1:{port} (UI), database {where}; in other shells: "
               f"export PREFECT_API_URL=http://127.0.0.1:{port}/api", err=True)
    run_server(the_home.root.resolve(), port, postgres)


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


models_app = typer.Typer(no_args_is_help=True, help="The model registry (H/registry): published versions and their aliases.")
app.add_typer(models_app, name="models")


@models_app.command("list")
def models_list(home: Optional[Path] = HomeOption, as_json: bool = JsonOption) -> None:
    """Every model: its versions, champion and challenger, and the champion's gate metric.

    A damaged registry file (a truncated card or aliases file, weights of the wrong size) is named with
    its reason and fix after the healthy models, and the exit status is then 1 (healthy models: 0)."""
    from medmeta.errors import MedmetaError
    from medmeta.registry import registry_root, survey

    try:
        models, damaged = survey(home)
    except MedmetaError as error:
        _fail(str(error))
    lines = [f"{m['name']}: versions {', '.join(map(str, m['versions']))}; champion {m['champion'] or '-'}, "
             f"challenger {m['challenger'] or '-'}; {m['algorithm']}, {m['metric']['name']} "
             f"{_metric_text(m['metric']['value'])} (version {m['metric']['version']})" for m in models]
    lines += [f"DAMAGED {d['name']}" + (f" version {d['version']}" if d["version"] is not None else "")
              + f": {d['file']}: {d['reason']}; {d['fix']}" for d in damaged]
    _emit({"registry": str(registry_root(home)), "models": models, "damaged": damaged}, as_json,
          "\n".join(lines) or f"no models in {registry_root(home)}")
    if damaged:
        typer.secho(f"error: {len(damaged)} damaged registry file{'s' if len(damaged) > 1 else ''} "
                    "(listed above); the other models are usable", err=True, fg=typer.colors.RED)
        raise typer.Exit(1)


def _metric_text(value) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else "n/a"


@models_app.command("show")
def models_show(
    ref: str = typer.Argument(..., help="NAME (its champion), NAME@champion, NAME@challenger or NAME@VERSION."),
    home: Optional[Path] = HomeOption,
    as_json: bool = JsonOption,
) -> None:
    """A version's model card, and the aliases that point at it now (a damaged one: one line, exit 2)."""
    from medmeta.errors import MedmetaError
    from medmeta.registry import ALIASES, read_aliases, resolve

    try:
        found = resolve(home, ref)
        aliases = read_aliases(home, found.name)
        text = None if as_json else found.card_markdown()
    except MedmetaError as error:
        _fail(str(error))
    current = [a for a in ALIASES if aliases[a] == found.version]
    _emit({"name": found.name, "version": found.version, "path": str(found.path), "aliases": current,
           "card": found.card}, as_json, f"{text}\ncurrent aliases: {', '.join(current) or 'none'}")

# -- predict -------------------------------------------------------------------------------------

@app.command()
def predict(
    model: str = typer.Option(..., "--model", help="NAME (its champion), NAME@champion, NAME@challenger or NAME@VERSION."),
    query: Path = typer.Option(..., "--query", help="The cases to predict: a CSV (file column for DICOM, or record "
                                                     "columns) or a folder of DICOM files; for a compound-activity "
                                                     "model, a CSV or Parquet library with a SMILES column."),
    support: Optional[Path] = typer.Option(None, "--support", help="Labelled cases to adapt on (CSV with a label "
                                                                   "column, or a DICOM folder with labels.csv); "
                                                                   "optional for an adapted model; for a compound-"
                                                                   "activity model, the compounds measured on the "
                                                                   "new target (SMILES and a label or an activity "
                                                                   "with its unit)."),
    max_input_bytes: int = typer.Option(DEFAULT_MAX_INPUT_BYTES, "--max-input-bytes", min=1, envvar=MAX_INPUT_BYTES_ENV,
                                        help="The largest file predict reads (a support or query CSV, a DICOM "
                                             "file); a larger one is refused before it is read."),
    out: Optional[Path] = typer.Option(None, "--out", help="Compound-activity models: also write the ranking to "
                                                           "this file (.parquet/.pq: Parquet, else CSV)."),
    home: Optional[Path] = HomeOption,
    as_json: bool = JsonOption,
) -> None:
    """Class probabilities for each query case from a published model, adapted on --support; for a
    compound-activity model, the query compounds ranked by activity on the support's target (README: Predict)."""
    from medmeta.errors import MedmetaError
    from medmeta.home import Home
    from medmeta.registry import resolve

    try:
        found = resolve(Home.at(home), model)  # a model that is not there: one line before torch is imported
        from medmeta.predict.compounds import is_compound_model

        if is_compound_model(found.card):
            return _predict_compounds(found, support, query, out, max_input_bytes, as_json)
        if out is not None:
            raise MedmetaError(f"--out writes a compound ranking; model {found.ref} is not a compound-activity model")
        from medmeta.predict import predict as run_predict

        result = run_predict(Home.at(home), model, query, support, max_input_bytes)
    except (MedmetaError, ValueError) as error:  # ValueError: metalearn's EpisodeError / AdaptedStateError
        _fail(str(error))
    lines = [f"{result['model']} ({result['algorithm']}, adapted on {result['adapted_on']}; classes "
             f"{', '.join(result['classes'])})"]
    lines += [f"{case}: " + ", ".join(f"{c} {p:.3f}" for c, p in probs.items())
              for case, probs in result["predictions"].items()]
    _emit(result, as_json, "\n".join(lines))


def _predict_compounds(found, support: Optional[Path], query: Path, out: Optional[Path], max_input_bytes: int,
                       as_json: bool) -> None:
    """``medmeta predict`` for a compound-activity model (medmeta/predict/compounds.py): a header line on
    stderr, the ranking as CSV on stdout (nothing there with --out), or the JSON object with --json."""
    from medmeta.errors import MedmetaError
    from medmeta.predict import compounds

    try:
        result = compounds.predict_compounds(found, support, query, max_input_bytes)
        if out is not None:
            try:
                compounds.write_output(result, out)
            except OSError as error:
                raise MedmetaError(f"--out {out}: can not be written ({error.strerror or type(error).__name__})") from None
            result["out"] = str(out)
    except MedmetaError as error:
        _fail(str(error))
    typer.echo(compounds.header_line(result) + (f"; written to {out}" if out is not None else ""), err=True)
    if as_json:
        _emit(result, True, "")
    elif out is None:
        sys.stdout.write(compounds.csv_text(result))


@app.command()
def adapt(
    taskset: Optional[str] = typer.Option(None, "--taskset", help="One task set [default: every task set in the home]."),
    home: Optional[Path] = HomeOption,
    config: Optional[Path] = PipelineConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Adapt each task set's champion to its rare classes and publish the adapted models (Prefect flow)."""

    def call(root, settings):
        from flows.adapt import adapt_flow

        return adapt_flow(root, settings, taskset)

    result = _run_stage(home, config, "adapting the champions to their rare classes", call,
                        _taskset_exists(taskset) if taskset else None)
    from medmeta.training.report import adapted_lines

    _emit(result, as_json, "\n".join(adapted_lines(result)) or "no task set has classes left out of meta-training")

# -- task sets (`medmeta tasks ...`) -------------------------------------------------------------

tasks_app = typer.Typer(no_args_is_help=True, help="Few-shot task sets built from the validated snapshot.")
app.add_typer(tasks_app, name="tasks")


@tasks_app.command("build")
def tasks_build(
    by: Optional[str] = typer.Option(None, "--by", help="disease (one class per condition concept), drug (one binary response task per drug concept) or target (one binary task per compound activity task, split by ChEMBL target) [default: every task set under `tasksets:` in the settings, as `medmeta run` builds them]."),
    inputs: Optional[str] = typer.Option(None, "--inputs", help="images, records, both or compounds [default: images for disease, records for drug, compounds for target]."),
    ways: Optional[int] = typer.Option(None, "--ways", help="Classes per episode [default: 3; drug: 2]."),
    shots: Optional[int] = typer.Option(None, "--shots", help="Support cases per class [default: 5]."),
    queries: Optional[int] = typer.Option(None, "--queries", help="Query cases per class [default: 3; drug: 5]."),
    seed: int = typer.Option(0, "--seed", help="Seeds the split of classes into meta-train/val/test."),
    name: Optional[str] = typer.Option(None, "--name", help="[default: <by>-<inputs>-<W>w<K>s<Q>q-seed<S>; target: target-compounds-seed<S>, then -p<threshold>, -test<N>]"),
    system: str = typer.Option("auto", "--system", help="The class code system: auto (the one with the most patients), a short name (sct, icd10cm, rxnorm, atc, ...) or a URI."),
    concept_map: Optional[list[Path]] = typer.Option(None, "--concept-map", help="A concept map (FHIR ConceptMap .json or .csv source_system,source_code,target_system,target_code), applied before classes are formed; repeatable, in order."),
    outcomes: Optional[Path] = typer.Option(None, "--outcomes", help="Drug tasks: your outcome rule file [default: medmeta/config/outcomes.yaml]."),
    label_policy: str = typer.Option("auto", "--label-policy", help="Disease tasks: auto, rarest (one case per patient) or per-split (one case per patient within each split)."),
    conditions: str = typer.Option("disorders", "--conditions", help="Disease tasks: disorders (SNOMED CT findings and situations are no classes) or all."),
    feature_min_patients: float = typer.Option(0.2, "--feature-min-patients", help="Record features: analytes (and drug tasks' conditions) of at least this fraction of the meta-train patients."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Target tasks: a compound is active at or above this pActivity (-log10 molar) [default: each task's median]."),
    test_tasks: Optional[int] = typer.Option(None, "--test-tasks", help="Target tasks: exactly this many meta-test tasks (whole targets) and no meta-validation, drawn by --seed as the FS-Mol protocol does [default: the stable split by a hash of each target]."),
    home: Optional[Path] = HomeOption,
    config: Optional[Path] = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Build a task set from the current snapshot (refused when its validation failed); a Prefect flow.
    Without --by, every task set of the settings' `tasksets:` (the --config file, else the defaults)."""
    from medmeta.errors import MedmetaError
    from medmeta.home import Home
    from medmeta.tasksets.spec import TASKSET_OPTIONS, make_spec

    the_home = Home.at(home)
    options = dict(system=system, concept_maps=[str(p) for p in concept_map or []],
                   outcomes=str(outcomes) if outcomes else None, label_policy=label_policy, conditions=conditions,
                   feature_min_patients_fraction=feature_min_patients, threshold=threshold, test_tasks=test_tasks)
    requests = [((by, inputs, ways, shots, queries, seed, name), options)]
    try:  # the gate, the map and rule files, the cases and the split, before the embedded Prefect server starts
        settings = _settings(config)
        if by is None:
            requests = [((e["by"], e.get("inputs"), e.get("ways"), e.get("shots"), e.get("queries"), int(e.get("seed", 0)),
                          e.get("name")), {k: e[k] for k in TASKSET_OPTIONS if k in e}) for e in settings.tasksets]
        specs = [make_spec(*arguments, **chosen) for arguments, chosen in requests]  # the options, at once
        from validation.gate import current_snapshot

        current_snapshot(the_home)  # a snapshot to build from, before pandas and the cases are loaded
        from medmeta.tasksets.build import plan_taskset

        for spec in specs:
            plan_taskset(the_home, spec)
    except MedmetaError as error:  # a NotEnoughClasses carries a report: what was found per class goes out with --json
        report = getattr(error, "report", None)  # (medmeta.tasksets.build imports pandas: not imported for a typo)
        if as_json and isinstance(report, dict):
            _emit({"error": str(error), **report}, True, "")
        _fail(str(error))
    _prefect_environment(the_home.root)
    from flows.tasksets import build_tasksets_flow

    try:
        with _spinner("building the task set" + ("s" if len(requests) > 1 else "")), _running():
            summaries = [build_tasksets_flow(*arguments, str(the_home.root), **chosen) for arguments, chosen in requests]
    except MedmetaError as error:
        _fail(str(error))
    if len(summaries) == 1:
        _emit(summaries[0], as_json, "\n".join(_taskset_lines(summaries[0])))
    else:
        _emit({"tasksets": summaries}, as_json, "\n".join(line for s in summaries for line in _taskset_lines(s)))


def _taskset_lines(summary: dict) -> list[str]:
    human = [f"task set {summary['name']} from snapshot {summary['snapshot']} ({summary['path']}), classes in "
             f"{summary['class_system']}"]
    unit = {"drug": "drugs", "target": "tasks"}.get(summary["kind"], "diseases")
    human += [f"  {split}: {len(e['classes'])} {unit}, {e['cases']} cases ({', '.join(e['classes'])})"
              for split, e in summary["splits"].items()]
    human += [f"  excluded {e['code']}: {e['reason']}" for e in summary["excluded"]]
    return human


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


@contextmanager
def _running() -> Iterator[None]:
    """A flow runs: the embedded-server settings, and faults kept to one line on the terminal."""
    from medmeta.cli_errors import hide_fault_records
    from medmeta.prefect_runtime import embedded_run_settings

    with embedded_run_settings():
        hide_fault_records()  # after Prefect (imported by now) has set up its console handlers
        yield


def _fail_run(error: BaseException, home: Path) -> None:
    """The exception that failed a `medmeta run`: one line when it is a fault, else a traceback."""
    from medmeta.errors import fault_line
    from medmeta.tasksets.build import NotEnoughClasses

    line = fault_line(error, home)
    if line is None:
        raise error
    if isinstance(error, NotEnoughClasses):  # `medmeta run` has no --ways: say where they are set
        line += ("; `medmeta run` takes ways, shots and queries from the task set's entry under `tasksets:` "
                 "in the --config file (medmeta/config/pipeline.yaml)")
    _fail(line)


def _spinner(text: str):
    from rich.console import Console

    return Console(stderr=True).status(text)


def main() -> None:
    """The ``medmeta`` entry point: a fault (``medmeta.errors.fault_line``) ends in one line and exit 2."""
    from medmeta.errors import fault_line

    try:
        app()
    except Exception as error:
        line = fault_line(error, _HOME[0] if _HOME else "the home")
        if line is None:
            raise
        typer.secho(f"error: {line}", err=True, fg=typer.colors.RED)
        sys.exit(2)


if __name__ == "__main__":
    main()
