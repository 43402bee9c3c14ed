"""One pipeline trains at a time: a Prefect global concurrency limit of one slot, held on a lease.

A second pipeline run that reaches training waits for the slot; it does not fail. The slot is
held on a lease of ``MEDMETA_TRAINING_LEASE_SECONDS`` (default 60, Prefect's minimum) that the
holder renews from a thread every 3/4 of that time. When the holder dies (``kill -9``, a lost
machine) the renewals stop, the lease expires and its slot is given back:

- by a Prefect server's repossessor service (``prefect server start`` and ``medmeta server`` run
  it; ``medmeta server`` looks every 10 s and keeps leases on disk, so they survive its restart);
- with medmeta's embedded server (no ``PREFECT_API_URL``), which is an ephemeral Prefect server
  that runs no repossessor and dies with its process, by the next run itself: leases are kept on
  disk in ``$PREFECT_HOME/concurrency_leases`` (``medmeta.cli`` sets the storage) and a waiting run
  releases the expired ones through the API (``release_expired_leases``).

Prefect's test harness (``prefect_test_harness``) is ephemeral too, with leases in its memory:
against it a killed holder's slot is not given back.
"""

from __future__ import annotations

import os
import time
from contextlib import ExitStack, contextmanager
from typing import Iterator

TRAINING_LIMIT = "medmeta-training"
LEASE_ENV = "MEDMETA_TRAINING_LEASE_SECONDS"
DEFAULT_LEASE_S = 60.0
MIN_LEASE_S = 60.0  # the Prefect API refuses shorter leases
WAIT_POLL_S = 5.0  # how often a waiting run asks for the slot again
FILESYSTEM_LEASES = "prefect.server.concurrency.lease_storage.filesystem"


def lease_seconds() -> float:
    """The lease of the training slot in seconds: ``$MEDMETA_TRAINING_LEASE_SECONDS`` or 60."""
    from medmeta.errors import MedmetaError

    raw = os.environ.get(LEASE_ENV, "").strip()
    if not raw:
        return DEFAULT_LEASE_S
    try:
        value = float(raw)
    except ValueError:
        raise MedmetaError(f"{LEASE_ENV} must be a number of seconds (at least {MIN_LEASE_S:.0f})") from None
    if not MIN_LEASE_S <= value <= 86400:
        raise MedmetaError(f"{LEASE_ENV} must be between {MIN_LEASE_S:.0f} and 86400 seconds")
    return value


def ensure_training_limit() -> None:
    """Create the limit (one slot) on the current Prefect API if it does not exist; an existing
    one is left as it is (an operator may have changed it: `prefect gcl update medmeta-training`)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(TRAINING_LIMIT)
            return
        except ObjectNotFound:
            pass
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=TRAINING_LIMIT, limit=1))
        except ObjectAlreadyExists:  # another run created it between our read and our write
            pass


@contextmanager
def training_slot() -> Iterator[None]:
    """Hold the training slot for the ``with`` block, waiting (with a log line) while it is taken."""
    from prefect.concurrency.sync import concurrency

    lease_s = lease_seconds()
    ensure_training_limit()
    told = False
    with ExitStack() as held:
        while True:
            release_expired_leases()
            try:
                held.enter_context(concurrency(TRAINING_LIMIT, occupy=1, strict=True, lease_duration=lease_s,
                                               holder=_this_flow_run(), max_retries=0))
                break
            except Exception as error:
                if not _slot_taken(error):
                    raise
            if not told:
                _logger().warning("waiting for the %s slot: another run is training (a run that died gives it back "
                               "within %.0f s)", TRAINING_LIMIT, lease_s + 15)
                told = True
            time.sleep(WAIT_POLL_S)
        yield


def _logger():
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_logger, get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return get_logger("medmeta.training")


def _slot_taken(error: BaseException) -> bool:
    """Prefect's 'slot taken' answer (HTTP 423) to an acquisition with no retries left."""
    import httpx

    cause = error.__cause__
    return isinstance(cause, httpx.HTTPStatusError) and cause.response.status_code == 423


def _this_flow_run():
    """The lease's holder: the flow run that trains (shown with the limit in the UI), if any."""
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    run = context.flow_run if context else None
    return ConcurrencyLeaseHolder(type="flow_run", id=run.id) if run else None


def release_expired_leases() -> int:
    """Give back the slots of expired leases when this process's API is medmeta's embedded server.

    The embedded server is ephemeral (no repossessor service) and dies with its process, so a lease
    whose holder was killed would hold its slot for ever. With the leases on disk (the filesystem
    storage, set by ``medmeta.cli``), this releases each expired one through the API, which
    decrements its limits and revokes it; a lease file lock keeps two runs from releasing one twice.
    Against a server with an address (``PREFECT_API_URL``) it does nothing: that server's own
    repossessor does this. Returns the number of leases released.
    """
    from prefect.settings import PREFECT_API_URL, get_current_settings

    settings = get_current_settings()
    if PREFECT_API_URL.value() or settings.server.concurrency.lease_storage != FILESYSTEM_LEASES:
        return 0
    from prefect.client.orchestration import get_client
    from prefect.server.concurrency.lease_storage.filesystem import ConcurrencyLeaseStorage
    from prefect.utilities.asyncutils import run_coro_as_sync

    from medmeta.registry.lock import exclusive

    folder = settings.home / "concurrency_leases"
    if not folder.is_dir():
        return 0
    storage = ConcurrencyLeaseStorage(folder)
    with exclusive(folder / ".medmeta-release.lock"):
        expired = run_coro_as_sync(storage.read_expired_lease_ids())
        if expired:
            with get_client(sync_client=True) as client:
                for lease_id in expired:
                    client.release_concurrency_slots_with_lease(lease_id)
    return len(expired)
