"""The ingest's decode/de-identify batches as Prefect tasks on an external Dask cluster.

``dask_cluster(address)`` is a started ``prefect_dask.DaskTaskRunner(address=...)``, connected and
its workers checked (``medmeta.ingest.dask_engine``), before the ingest touches the home.
``run_on_dask`` submits one ``ingest-batches`` task per group of staging batches to it, through the
task runner's own ``submit`` (what ``Task.submit`` calls on the flow's runner).

Why not ``ingest_flow.with_options(task_runner=DaskTaskRunner(...))``: Prefect picks a flow's task
runner before the flow body runs, but the address is an ingest setting (``ingest.dask_address`` in
the config file, ``$MEDMETA_DASK_ADDRESS``, ``--dask``) that the flow resolves itself, whoever calls it
(the command line, the pipeline flow, a deployment). Entering the runner in the flow also lets the
flow check the cluster first and fail with one line naming the address, before anything is
written; the flow's other tasks (discovery, the snapshot) stay in the flow process either way.

A task's only parameter is a ``DaskJob``: Prefect records no value of it (its task inputs hold
upstream references only, and results are not persisted: ``NO_RESULTS``); the job travels pickled
to the worker through Dask. Its logs hold counts only.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from prefect import task
from prefect.futures import as_completed
from prefect.logging import get_run_logger
from prefect.settings import PREFECT_API_URL

from medmeta import progress
from medmeta.ingest.batches import task_groups
from medmeta.ingest.dask_engine import (CONNECT_TIMEOUT_S, NO_PREFECT_SERVER, DaskClusterError, DaskJob,
                                        check_reachable, check_shared_home, check_workers, run_job)
from medmeta.ingest.landings import landing_token
from medmeta.ingest.outcome import FileOutcome
from medmeta.ingest.setup import IngestSetup
from medmeta.landing.walk import InputItem
from tasks.options import NO_RESULTS


@task(name="ingest-batches", **NO_RESULTS)
def ingest_on_dask_worker(job: DaskJob) -> list[FileOutcome]:
    """Decode, de-identify and stage ``job``'s files on the Dask worker that runs this task."""
    outcomes = run_job(job)
    get_run_logger().info("%d files in %d staging batches done", job.files, len(job.batches))
    return outcomes


@contextmanager
def dask_cluster(address: str) -> Iterator:
    """A started ``DaskTaskRunner`` on the scheduler at ``address``, its workers checked; a
    ``DaskClusterError`` naming the address when it does not answer within ``CONNECT_TIMEOUT_S``."""
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise DaskClusterError("a Dask ingest needs prefect-dask: pip install 'medmeta[dask]' -c constraints.txt") from None
    if not PREFECT_API_URL.value():
        raise DaskClusterError(NO_PREFECT_SERVER)
    check_reachable(address)
    with DaskTaskRunner(address=address, client_kwargs={"timeout": CONNECT_TIMEOUT_S}) as runner:
        try:
            client = runner.client
        except (OSError, TimeoutError, ValueError) as error:
            raise DaskClusterError(f"the Dask scheduler at {address} does not answer ({type(error).__name__}): start "
                                   "it, or fix ingest.dask_address / $MEDMETA_DASK_ADDRESS / --dask, and rerun") from None
        check_workers(client, address)
        yield runner


def run_on_dask(runner, setup: IngestSetup, batches: list[list[InputItem]]) -> list[FileOutcome]:
    """Every staging batch decoded on the cluster; the outcomes in the listing's order.

    The home and the landing folder must be shared with every worker (checked first). A task that
    fails ends the run with its error; one whose worker died is run again by Dask elsewhere.
    """
    from distributed import KilledWorker
    from distributed.client import FutureCancelledError
    from distributed.comm import CommClosedError

    client = runner.client
    check_shared_home(client, setup.home, setup.source, landing_token(setup.source, setup.pseudonymizer))
    workers = sum(client.nthreads().values())  # decode threads: one per single-threaded worker
    jobs = [DaskJob(setup.worker_context, group)
            for group in task_groups(batches, setup.config.dask_task_seconds, workers)]
    futures = [runner.submit(ingest_on_dask_worker, {"job": job}) for job in jobs]
    files = {id(future): job.files for future, job in zip(futures, jobs)}
    try:
        for future in as_completed(futures):
            future.result()  # a failed task ends the run now; the runner's exit cancels the rest
            progress.report("ingest", files[id(future)])
    except KilledWorker:
        raise DaskClusterError("Dask workers kept dying while decoding one batch (Dask gave up on it): nothing was "
                               "recorded; look at the workers' logs (memory?) and rerun") from None
    except (FutureCancelledError, CommClosedError):
        raise DaskClusterError(f"the connection to the Dask scheduler at {setup.config.dask_address} was lost while "
                               "decoding: nothing was recorded; rerun") from None
    return [outcome for future in futures for outcome in future.result()]
