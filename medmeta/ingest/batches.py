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


# A file's decode/de-identify time on one core, estimated from its size: a fixed part per file
# (hash, sniff, header, de-identification, staging) and a part per byte (reading, pixel decoding,
# resizing). Measured on the 2-core machine of BENCHMARKS.md (synthetic DICOM of 64 to 512 pixels:
# 2.7 ms a file of 9 kB, 8.7 ms one of 438 kB). Record files cost more per byte (parsing), so a task
# of them holds more work than estimated, never less.
SECONDS_PER_FILE = 0.0026
SECONDS_PER_BYTE = 0.014 / 1e6


def estimated_seconds(items: list[InputItem]) -> float:
    return len(items) * SECONDS_PER_FILE + sum(item.size for item in items) * SECONDS_PER_BYTE


def task_groups(batches: list[list[InputItem]], task_seconds: float, workers: int) -> list[list[list[InputItem]]]:
    """Consecutive staging batches grouped into tasks of about ``task_seconds`` of work each
    (``estimated_seconds``), so that Prefect's cost per task is a small share of it.

    When that would leave some of the ``workers`` idle, the batches are spread over as many tasks
    as there are workers instead (a task then holds less, but every worker has one): what a small
    ingest loses to Prefect's per-task cost is less than a worker standing still. Deterministic
    from the listing; every batch lands in exactly one task, in order.
    """
    if not batches:
        return []
    costs = [estimated_seconds(batch) for batch in batches]
    total = sum(costs)
    wanted = max(1, min(len(batches), int(total // max(task_seconds, 1e-9))))
    if wanted < workers:
        wanted = min(len(batches), workers)
    share = total / wanted  # cut where the running estimate passes the next share, or when only
    groups, current, done = [], [], 0.0  # as many batches are left as groups still to make
    for index, (batch, cost) in enumerate(zip(batches, costs)):
        current.append(batch)
        done += cost
        to_make = wanted - len(groups) - 1
        if to_make and (done >= share * (len(groups) + 1) or len(batches) - index - 1 == to_make):
            groups.append(current)
            current = []
    return groups + ([current] if current else [])
