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
from medmeta.ingest.image_parts import known_image_sources, stage_batch, staging_listing
from medmeta.ingest.landings import landing_token
from medmeta.ingest.ledger import Ledger, archive_stats, item_stats
from medmeta.ingest.outcome import UNCHANGED, FileOutcome
from medmeta.ingest.parts import part_exists
from medmeta.ingest.pool import WorkerPool
from medmeta.ingest.setup import IngestSetup
from medmeta.ingest.summary import summary_markdown
from medmeta.landing.journal import journal_file, sync
from medmeta.landing.walk import InputItem, discover
from tasks.options import NO_RESULTS


class Listing:
    """What discovery found: the files to read (``items``), how many plain files the ledger knows by
    size and mtime with their content still staged (``unchanged``: never opened, no object each),
    the ``unchanged`` outcomes the ledger must record for some of those (``to_record``: after a first
    ingest, every file; after that, none), the (size, mtime_ns) of the files the ledger records
    (``stats``), the listing signatures of the folders found settled whole (``folders``:
    ``SettledMatcher.signatures``; None when every file is read again) and the (size, mtime_ns) of the
    zip archives whose entries are read (``archives``: for the watcher's first look) and whether every file the
    ledger held as settled had its content staged when the run started (``all_staged``: then the ledger may claim
    it for what this run records, ``Ledger.record(staged_after=)``), the change journal's position the
    listing was made at (``watch``: ``[session, seq, max_file_bytes]``, None without a journal) and how
    many folders it held unchanged (``folders_by_journal``: settled with no ``stat`` of their files). A plain
    class, so Prefect does not walk its entries as it walks a task's list or dataclass result."""

    __slots__ = ("items", "unchanged", "to_record", "stats", "folders", "archives", "all_staged", "watch",
                 "folders_by_journal")

    def __init__(self, items: list[InputItem], unchanged: int, to_record: list[FileOutcome],
                 stats: dict[str, tuple[int, int]], folders: dict[str, str] | None = None,
                 archives: dict[str, tuple[int, int]] | None = None, all_staged: bool = False,
                 watch: list | None = None, folders_by_journal: int = 0):
        self.items, self.unchanged, self.to_record, self.stats = items, unchanged, to_record, stats
        self.folders, self.archives, self.all_staged = folders, archives or {}, all_staged
        self.watch, self.folders_by_journal = watch, folders_by_journal


@task(name="discover-inputs", **NO_RESULTS)
def discover_inputs(setup: IngestSetup) -> Listing:
    """Every input of the landing; with ``reread_unchanged`` every file is read again."""
    settled: list[tuple[str, str, int, int]] = []
    to_record: list[tuple[str, str, int, int]] = []
    unchanged, folders, all_staged, watch, by_journal = 0, None, False, None, 0
    if setup.config.reread_unchanged:
        items = discover(setup.source, setup.config)
    else:
        parts, size = setup.home.parts, setup.config.image_size
        view = sync(setup.source, journal_file(setup.home.watch, landing_token(setup.source, setup.pseudonymizer))) \
            if setup.source.is_dir() else None  # before the listing: every change made before it is in the view
        matcher = Ledger.load(setup.home.ledger, setup.pseudonymizer).settled_matcher(
            setup.source, lambda sha256: part_exists(parts, sha256),
            lambda: known_image_sources(parts, size, setup.worker_context.staged_batches),
            staging=staging_listing(parts, size), watch=view, max_file_bytes=setup.config.max_file_bytes)
        items = discover(setup.source, setup.config, matcher, settled)
        to_record, unchanged, folders = matcher.to_record, matcher.settled_in_folders, matcher.signatures
        all_staged, by_journal = matcher.all_staged(), matcher.folders_by_journal
        if view is not None:
            watch = [*view.position.to_list(), setup.config.max_file_bytes]
    unchanged += len(settled)
    stats = item_stats(items)
    stats.update((path, (size, mtime_ns)) for path, _, size, mtime_ns in to_record)
    get_run_logger().info("found %d input files, %d unchanged (%d folders held unchanged by the change journal)",
                          len(items) + unchanged, unchanged, by_journal)
    progress.report("ingest", 0, len(items) + unchanged)
    return Listing(items, unchanged, [FileOutcome(path, UNCHANGED, sha256) for path, sha256, _, _ in to_record],
                   stats, folders, archive_stats(items), all_staged, watch, by_journal)


@task(name="ingest-batch", **NO_RESULTS)
def ingest_batch(items: list[InputItem], pool: WorkerPool, setup: IngestSetup) -> list[FileOutcome]:
    outcomes = stage_batch(setup.home.parts, setup.config.image_size, pool.map(items))
    get_run_logger().info("batch of %d files done", len(items))
    progress.report("ingest", len(items))
    return outcomes


@task(name="build-snapshot", **NO_RESULTS)
def build_snapshot(setup: IngestSetup, outcomes: list[FileOutcome], stats: dict | None = None,
                   folders: dict[str, str] | None = None, archives: dict[str, tuple[int, int]] | None = None,
                   all_staged: bool = False, watch: list | None = None) -> dict:
    sync_all()  # every staged part on disk before the ledger points at it
    ledger = Ledger.load(setup.home.ledger, setup.pseudonymizer)
    staged_after = staging_listing(setup.home.parts, setup.config.image_size) if all_staged else None
    ledger.record(setup.source, outcomes, stats, folders, archives, staged_after, watch)
    ledger.save()
    manifest = consolidate(setup.home, ledger.active(), setup.pseudonymizer, setup.config.image_size,
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
