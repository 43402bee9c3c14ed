"""One pipeline trains at a time: a Prefect global concurrency limit of one slot.

A second pipeline run that reaches training waits for the slot; it does not fail.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

TRAINING_LIMIT = "medmeta-training"


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
    from prefect.concurrency.sync import concurrency

    ensure_training_limit()
    with concurrency(TRAINING_LIMIT, occupy=1, strict=True):
        yield
