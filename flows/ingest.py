"""The ingest flow: a landing folder or zip to a de-identified canonical snapshot."""

from __future__ import annotations

from datetime import datetime, timezone

from prefect import unmapped
from prefect.utilities.annotations import quote

from medmeta.ingest.ledger import Ledger, item_stats
from medmeta.ingest.parts import part_exists
from medmeta.ingest.pool import WorkerPool
from medmeta.ingest.setup import IngestSetup, home_lock
from medmeta.ingest.summary import summarize
from medmeta.ingest.units_step import warm_units_for
from flows.landing_flow import landing_flow
from flows.validate import validate_flow
from tasks.ingest import build_snapshot, discover_inputs, ingest_batch, report_ingest
from validation.report import digest


@landing_flow("source", name="ingest", persist_result=False, validate_parameters=True)
def ingest_flow(source: str | None = None, home: str | None = None, config: str | None = None,
                workers: int | None = None, run_validation: bool = True, rules: str | None = None) -> dict:
    """Walk SOURCE, ingest every file (or quarantine it with a reason), build a snapshot, validate it.

    SOURCE is the landing folder or zip: its path in process, its landing token from Prefect (the
    flow run's parameter is always the token: flows/landing_flow.py). The summary names files by
    their path tokens; ``medmeta.ingest.summary.quarantined_names`` gives this process their names.
    """
    setup = IngestSetup.create(source, home, config, workers)
    with home_lock(setup.home):
        with WorkerPool(setup.worker_context, setup.config.worker_count) as pool:  # boots while files are found
            items = discover_inputs(setup)
            stats = item_stats(items)
            known = setup.worker_context.known_images
            unchanged, items = ([], items) if setup.config.reread_unchanged else \
                Ledger.load(setup.home.ledger, setup.pseudonymizer).split_unchanged(
                    setup.source, items, lambda h: h in known or part_exists(setup.home.parts, h))
            warm_units_for([item.logical_path for item in items])  # records: the UCUM registry, meanwhile
            size = setup.config.batch_size
            batches = [items[i:i + size] for i in range(0, len(items), size)]
            futures = ingest_batch.map(batches, pool=unmapped(pool), setup=unmapped(setup))
            outcomes = sorted(unchanged + [outcome for future in futures for outcome in future.result()],
                              key=lambda outcome: outcome.path)
        manifest = build_snapshot(setup, quote(outcomes), quote(stats))  # quote: not walked item by item
    summary = summarize(outcomes, manifest, setup.pseudonymizer)
    report_ingest(setup, summary, datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ"))
    if run_validation:
        result = validate_flow(str(setup.home.root), rules)
        summary["validation"] = digest(result)
    return summary
