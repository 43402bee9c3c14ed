"""How an ingest cuts its files into batches: the same cut whichever engine decodes them.

A *staging batch* is ``batch_size`` consecutive files of the sorted listing (``discover`` sorts by
logical path); each one's DICOM images become one staged image batch file
(``medmeta.ingest.image_parts.write_image_batch``). The local process pool runs one Prefect task
per staging batch. On Dask a task costs Prefect about 0.25 s of its own (creating the task run,
its states and logs through the API), so a Dask task takes several whole staging batches
(``task_groups``): the staged files are the same either way, and so are the store and the snapshot.
"""

from __future__ import annotations

from medmeta.landing.walk import InputItem


def staging_batches(items: list[InputItem], batch_size: int) -> list[list[InputItem]]:
    """``items`` (in the sorted listing's order) cut every ``batch_size`` files."""
    return [items[i:i + batch_size] for i in range(0, len(items), batch_size)]


def task_groups(batches: list[list[InputItem]], task_bytes: int, workers: int) -> list[list[list[InputItem]]]:
    """Consecutive staging batches grouped into tasks of at least ``task_bytes`` bytes of files.

    When that would leave some of the ``workers`` idle, the batches are spread over as many tasks
    as there are workers instead (a task then holds less, but every worker has one): what a small
    ingest loses to Prefect's per-task cost is less than a worker standing still. Deterministic
    from the listing; every batch lands in exactly one task, in order.
    """
    if not batches:
        return []
    sizes = [sum(item.size for item in batch) for batch in batches]
    total = sum(sizes)
    wanted = max(1, min(len(batches), total // max(1, task_bytes)))
    if wanted < workers:
        wanted = min(len(batches), workers)
    share = total / wanted  # cut where the running byte count passes each share
    groups, current, done, cut = [], [], 0, 1
    for batch, size in zip(batches, sizes):
        current.append(batch)
        done += size
        if done >= share * cut and len(groups) < wanted - 1:
            groups.append(current)
            current, cut = [], cut + 1
    return groups + ([current] if current else [])
