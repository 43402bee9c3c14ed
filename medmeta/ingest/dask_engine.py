"""Decoding on an external Dask cluster: what its workers run, and what they must have in common.

The flow process stays the one writer of the ledger, the consolidated store, the snapshot and
the home's lock. A Dask worker writes only what a local pool's worker writes: the parts of record
files, quarantine copies and, per staging batch, its image batch file (``image_parts.stage_batch``),
all into the shared home.

One Dask worker process is one decode process: workers run single-threaded (``dask worker
--nthreads 1``), and a task decodes its files in the worker process itself, with a ``Worker``
built once per process (``worker_for``). No process pool is nested inside a Dask worker: a worker
is daemonic by default and a daemonic process may not start children; running it non-daemonic
(``DASK_DISTRIBUTED__WORKER__DAEMON=False``) would let it, but the pool's processes would then live
outside Dask's view (memory limits, restarts, the nanny's kill on shutdown). To use more cores,
start more single-threaded workers.

Before anything is submitted, the flow checks the cluster (``check_workers``, ``check_shared_home``):
every worker must run the same packages (and the same medmeta code), have ``PREFECT_API_URL``
(without it each worker would start a hidden Prefect server of its own), and see the home and the
landing folder at the paths the flow sees. A worker that fails is named with the fix in a
``DaskClusterError``; the landing folder is named only by its token.

Nothing here imports Prefect: ``tasks/dask_runner.py`` submits ``run_job`` as a Prefect task.
"""

from __future__ import annotations

import gc
import hashlib
import os
import platform
import secrets
import tempfile
import time
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from medmeta.errors import MedmetaError
from medmeta.home import Home
from medmeta.ingest.image_parts import stage_batch
from medmeta.ingest.outcome import FileOutcome
from medmeta.ingest.process import WORKER_GC_THRESHOLDS, Worker, WorkerContext
from medmeta.landing.walk import InputItem

# Packages whose versions every worker must share with the flow (besides medmeta's own code).
CHECKED_PACKAGES = ("prefect", "prefect-dask", "dask", "distributed", "torch", "pydicom", "numpy", "pyarrow")
CONNECT_TIMEOUT_S = 10  # connecting to the scheduler; then waiting for a first worker as long again
PROBE_PREFIX = ".dask-probe-"  # a dot file: a probe left by a killed run is removed by the next lock
TEST_DELAY_ENV = "MEDMETA_TEST_BATCH_DELAY_S"  # tests only: a window to kill a worker in
NO_PREFECT_SERVER = ("a Dask ingest needs a Prefect server that the flow and every Dask worker reach: start one "
                     "(medmeta server) and set PREFECT_API_URL here and in the workers' environment")


class DaskClusterError(MedmetaError):
    """The Dask cluster can not take this ingest; the message names the scheduler or worker and the fix."""


class DaskJob:
    """One Dask task's work: whole staging batches and the context to decode them with.

    A plain class, not a dataclass: Prefect looks into dataclasses' fields for upstream futures, and
    there is nothing to find here. Its repr shows counts only; the ``WorkerContext`` (which holds
    the pseudonym key) and the files' paths travel pickled to the worker, never to Prefect.
    """

    __slots__ = ("context", "batches")

    def __init__(self, context: WorkerContext, batches: list[list[InputItem]]):
        self.context = context
        self.batches = [list(batch) for batch in batches]

    @property
    def files(self) -> int:
        return sum(len(batch) for batch in self.batches)

    def __repr__(self) -> str:
        return f"DaskJob({self.files} files in {len(self.batches)} staging batches)"

    def __getstate__(self):
        return (self.context, self.batches)

    def __setstate__(self, state) -> None:
        self.context, self.batches = state


_built: tuple[WorkerContext, Worker] | None = None  # this worker process's Worker, for the run it was built for


def worker_for(ctx: WorkerContext) -> Worker:
    """The ``Worker`` of this process for ``ctx``: built on a run's first task here, then reused."""
    global _built
    if _built is None or _built[0] != ctx:
        first = _built is None
        _built = (ctx, Worker(ctx))
        if first:  # as a pool process does (medmeta.ingest.process.init_worker)
            gc.collect()
            gc.freeze()
            gc.set_threshold(*WORKER_GC_THRESHOLDS)
    return _built[1]


def run_job(job: DaskJob) -> list[FileOutcome]:
    """Decode and stage ``job``'s files in this process; their outcomes, in the listing's order.

    Each staging batch's images are written as one image batch file, exactly as the local pool's
    batch task writes them, so both engines stage the same files.
    """
    _test_delay()
    worker = worker_for(job.context)
    outcomes: list[FileOutcome] = []
    for batch in job.batches:
        outcomes += stage_batch(worker.home.parts, job.context.config.image_size,
                                [worker.process(item) for item in batch])
    return outcomes


def _test_delay() -> None:
    """Tests only: wait while ``$MEDMETA_TEST_BATCH_DELAY_S`` is set on this worker, at most that long
    (a test sets and clears it on a running worker with ``Client.run``)."""
    limit = float(os.environ.get(TEST_DELAY_ENV) or 0)
    start = time.monotonic()
    while limit and os.environ.get(TEST_DELAY_ENV) and time.monotonic() - start < limit:
        time.sleep(0.05)


# -- what every worker must share with the flow ------------------------------------------------------

def check_reachable(address: str) -> None:
    """A TCP connection to the scheduler opens within ``CONNECT_TIMEOUT_S`` (a refused one fails at once,
    where Dask's client would retry until its timeout); ``DaskClusterError`` naming the address."""
    import socket

    scheme, _, rest = address.rpartition("://")
    if scheme not in ("", "tcp", "tls"):
        return  # another transport (ucx): the Dask client's own connect decides
    host, _, port = rest.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise DaskClusterError(f"the Dask scheduler at {address} does not answer ({reason}): start it, or fix "
                               "ingest.dask_address / $MEDMETA_DASK_ADDRESS / --dask, and rerun") from None


@lru_cache(maxsize=1)
def code_digest() -> str:
    """A digest of medmeta's own Python code as installed here (the ``medmeta`` and ``tasks``
    packages): the version number alone does not tell two checkouts of one version apart."""
    import medmeta
    import tasks

    digest = hashlib.sha256()
    for package in (medmeta, tasks):
        root = Path(package.__file__).parent
        for path in sorted(root.rglob("*.py")):
            digest.update(str(path.relative_to(root.parent)).encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


def package_versions() -> dict[str, str]:
    import medmeta

    versions = {"python": platform.python_version(), "medmeta": f"{medmeta.__version__} (code {code_digest()})"}
    for name in CHECKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def worker_report() -> dict:
    """Run on every worker (``Client.run``): its package versions and whether ``PREFECT_API_URL`` is in
    its environment."""
    return {"versions": package_versions(), "prefect_api": bool(os.environ.get("PREFECT_API_URL"))}


def check_workers(client, address: str) -> list[str]:
    """The addresses of the cluster's workers, each checked against this process; ``DaskClusterError``
    for the first that differs (or that could not run the check: medmeta missing there)."""
    try:
        client.wait_for_workers(1, timeout=CONNECT_TIMEOUT_S)
    except TimeoutError:
        raise DaskClusterError(f"the Dask scheduler at {address} has no workers: start some "
                               f"(dask worker {address} --nthreads 1) and rerun") from None
    here = package_versions()
    reports = client.run(worker_report, on_error="return")
    for worker, report in sorted(reports.items()):
        if isinstance(report, BaseException):
            raise DaskClusterError(f"the Dask worker {worker} could not run medmeta's check "
                                   f"({type(report).__name__}: {report}): install the same medmeta on every worker")
        for name, version in here.items():
            theirs = report["versions"].get(name, "not installed")
            if theirs != version:
                raise DaskClusterError(f"the Dask worker {worker} runs {name} {theirs}, this flow {version}: every "
                                       "worker needs the same package versions (pip install -c constraints.txt)")
        if not report["prefect_api"]:
            raise DaskClusterError(f"the Dask worker {worker} has no PREFECT_API_URL: start every worker with the "
                                   "Prefect server's URL in its environment (else each starts a hidden server)")
    return sorted(reports)


def see_shared_folders(probe: str, expected: str, landing: str) -> dict:
    """Run on every worker: can it read the flow's probe, write beside it, and see the landing folder?"""
    path = Path(probe)
    try:
        seen = path.read_text() == expected
    except OSError:
        seen = False
    writable = False
    if seen:
        try:
            with tempfile.TemporaryFile(dir=path.parent, prefix=PROBE_PREFIX):
                writable = True
        except OSError:
            pass
    return {"home": seen, "writable": writable, "landing": os.path.isdir(landing) or os.path.isfile(landing)}


def check_shared_home(client, home: Home, landing: Path, landing_token: str) -> None:
    """Every worker sees the home (a probe the flow writes into its staging folder reads back the
    same on each), can write there, and sees the landing folder; else ``DaskClusterError`` naming
    the worker and the home, and the landing by its token only."""
    home.parts.mkdir(parents=True, exist_ok=True)
    probe = home.parts / f"{PROBE_PREFIX}{secrets.token_hex(8)}"
    expected = secrets.token_hex(16)
    probe.write_text(expected)
    try:
        reports = client.run(see_shared_folders, str(probe), expected, str(landing), on_error="return")
    finally:
        probe.unlink(missing_ok=True)
    for worker, seen in sorted(reports.items()):
        if isinstance(seen, BaseException):
            raise DaskClusterError(f"the Dask worker {worker} could not check the home {home.root} "
                                   f"({type(seen).__name__})")
        if not seen["home"]:
            raise DaskClusterError(f"the Dask worker {worker} cannot see the home {home.root}: put the home on a "
                                   "file system every worker mounts at the same path, and rerun")
        if not seen["writable"]:
            raise DaskClusterError(f"the Dask worker {worker} cannot write the home {home.root} (store/parts): "
                                   "give the workers' user write access, and rerun")
        if not seen["landing"]:
            raise DaskClusterError(f"the Dask worker {worker} cannot see the landing folder {landing_token}: mount "
                                   "it on every worker at the same path, and rerun")
