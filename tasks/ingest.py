"""Prefect tasks of the ingest flow: coarse, one batch of files each, nothing but counts logged.

Their parameters and results (the landing folder, the files' names) are neither cached nor
persisted (``NO_RESULTS``), and Prefect records only references to upstream runs as task inputs:
no name reaches its database. The run summary they write holds path tokens only."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.logging import get_run_logger

from medmeta import progress
from medmeta.atomic import sync_all, write_json
from medmeta.ingest.consolidate import consolidate
from medmeta.ingest.image_parts import write_image_batch
from medmeta.ingest.ledger import Ledger
from medmeta.ingest.outcome import FileOutcome
from medmeta.ingest.pool import WorkerPool
from medmeta.ingest.setup import IngestSetup
from medmeta.ingest.summary import summary_markdown
from medmeta.landing.walk import InputItem, discover
from tasks.options import NO_RESULTS


@task(name="discover-inputs", **NO_RESULTS)
def discover_inputs(setup: IngestSetup) -> list[InputItem]:
    settled = None if setup.config.reread_unchanged else \
        Ledger.load(setup.home.ledger, setup.pseudonymizer).stat_matcher(setup.source)
    items = discover(setup.source, setup.config, settled)
    get_run_logger().info("found %d input files", len(items))
    progress.report("ingest", 0, len(items))
    return items


@task(name="ingest-batch", **NO_RESULTS)
def ingest_batch(items: list[InputItem], pool: WorkerPool, setup: IngestSetup) -> list[FileOutcome]:
    results = pool.map(items)
    write_image_batch(setup.home.parts, setup.config.image_size, [payload for _, payload in results if payload is not None])
    outcomes = [outcome for outcome, _ in results]
    get_run_logger().info("batch of %d files done", len(items))
    progress.report("ingest", len(items))
    return outcomes


@task(name="build-snapshot", **NO_RESULTS)
def build_snapshot(setup: IngestSetup, outcomes: list[FileOutcome], stats: dict | None = None) -> dict:
    sync_all()  # every staged part on disk before the ledger points at it
    ledger = Ledger.load(setup.home.ledger, setup.pseudonymizer)
    ledger.record(setup.source, outcomes, stats)
    ledger.save()
    manifest = consolidate(setup.home, ledger.active_hashes(), setup.pseudonymizer, setup.config.image_size,
                           setup.config.display_min_patients)
    get_run_logger().info("snapshot %s", manifest["snapshot"])
    return manifest


@task(name="report-ingest", **NO_RESULTS)
def report_ingest(setup: IngestSetup, summary: dict, run_name: str) -> None:
    write_json(setup.home.runs / f"ingest-{run_name}.json", summary)
    create_markdown_artifact(key="medmeta-ingest-summary", markdown=summary_markdown(summary),
                             description="Ingest: files accounted for and the canonical store's size")
    create_table_artifact(key="medmeta-ingest-tables", table=[{"table": k, "rows": v} for k, v in summary["tables"].items()],
                          description="Rows per canonical table in the new snapshot")
