"""The ingest flow: a landing folder or zip to a de-identified canonical snapshot."""

from __future__ import annotations

from contextlib import nullcontext
from datetime import datetime, timezone

from prefect import unmapped
from prefect.utilities.annotations import quote

from flows import run_names
from medmeta.ingest.batches import staging_batches
from medmeta.ingest.pool import WorkerPool
from medmeta.ingest.setup import IngestSetup, home_lock
from medmeta.ingest.summary import summarize
from medmeta.settings import Settings
from medmeta.ingest.units_step import warm_units_for
from flows.landing_flow import landing_flow
from flows.validate import validate_flow
from tasks.dask_runner import dask_cluster, run_on_dask
from tasks.ingest import build_snapshot, discover_inputs, ingest_batch, report_ingest
from validation.report import digest


@landing_flow("source", name="ingest", persist_result=False, validate_parameters=True, flow_run_name=run_names.dated("ingest"))
def ingest_flow(source: str | None = None, home: str | None = None, settings: Settings | None = None,
                workers: int | None = None, run_validation: bool = True, rules: str | None = None,
                dask_address: str | None = None) -> dict:
    """Walk SOURCE, ingest every file (or quarantine it with a reason), build a snapshot, validate it.

    SOURCE is the landing folder or zip: its path in process, its landing token from Prefect (the
    flow run's parameter is always the token: flows/landing_flow.py). The summary names files by
    their path tokens; ``medmeta.ingest.summary.quarantined_names`` gives this process their names.

    Files are decoded by a local process pool, or with ``dask_address`` (or the ``dask_address``
    setting, ``$MEDMETA_DASK_ADDRESS``) by the workers of that Dask cluster, checked before the home
    is touched. Either way this process alone writes the ledger, the store and the snapshot.

    ``settings``: medmeta's settings (medmeta/settings.py; None: the defaults): their ``ingest``
    section, and ``validation.rules`` when ``rules`` is None.
    """
    setup = IngestSetup.create(source, home, settings, workers, dask_address)
    if rules is None and settings is not None:
        rules = settings.validation["rules"]
    address = setup.config.dask_address
    with dask_cluster(address) if address else nullcontext() as cluster:
        with home_lock(setup.home):
            if cluster is not None:
                listing = discover_inputs(setup)
                items = listing.items
                warm_units_for([item.logical_path for item in items])
                outcomes = run_on_dask(cluster, setup, staging_batches(items, setup.config.batch_size))
            else:
                with WorkerPool(setup.worker_context, setup.config.worker_count) as pool:  # boots while files are found
                    listing = discover_inputs(setup)  # unchanged files by their stat: never read
                    items = listing.items
                    warm_units_for([item.logical_path for item in items])  # records: the UCUM registry, meanwhile
                    futures = ingest_batch.map(staging_batches(items, setup.config.batch_size), pool=unmapped(pool),
                                               setup=unmapped(setup))
                    outcomes = [outcome for future in futures for outcome in future.result()]
            outcomes = sorted(outcomes, key=lambda outcome: outcome.path)  # the files read; the rest: a count
            manifest = build_snapshot(setup, quote(outcomes + listing.to_record),  # quote: not walked item by item
                                      quote(listing.stats), quote(listing.folders), quote(listing.archives),
                                      listing.all_staged, quote(listing.watch))
    summary = summarize(outcomes, manifest, setup.pseudonymizer, unchanged=listing.unchanged)
    summary["folders_by_journal"] = listing.folders_by_journal
    report_ingest(setup, summary, datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ"))
    if run_validation:
        result = validate_flow(str(setup.home.root), rules)
        summary["validation"] = digest(result)
    return summary
