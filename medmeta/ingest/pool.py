"""Decode on all cores: a process pool whose workers are built once per process.

Workers are forked from a forkserver that has already imported the heavy modules, so a
pool starts in well under a second and never inherits the threads of the Prefect engine.
"""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor

from medmeta.ingest.image_parts import ImagePayload
from medmeta.ingest.outcome import FileOutcome
from medmeta.ingest.process import Worker, WorkerContext, init_worker, process_items
from medmeta.landing.walk import InputItem

# What every worker needs. The record parsers (and pandas) are imported by the first worker
# that meets a record file, so a folder of images never pays for them.
PRELOAD = ["medmeta.ingest.process", "medmeta.dicom.pixels", "medmeta.dicom.deidentify", "medmeta.landing.sniff"]


class WorkerPool:
    """``map(items)`` processes a batch of items across ``workers`` processes (1: in-process)."""

    def __init__(self, ctx: WorkerContext, workers: int):
        self.workers = workers
        self._local = Worker(ctx) if workers <= 1 else None
        self._executor = None
        if workers > 1:
            mp = multiprocessing.get_context("forkserver")
            mp.set_forkserver_preload(PRELOAD)
            self._executor = ProcessPoolExecutor(workers, mp_context=mp, initializer=init_worker, initargs=(ctx,))
            # Boot the forkserver and the workers now, in the background, while files are found.
            self._warming = threading.Thread(target=self._warm_up, daemon=True)
            self._warming.start()

    def _warm_up(self) -> None:
        for future in [self._executor.submit(process_items, []) for _ in range(self.workers)]:
            future.result()

    def map(self, items: list[InputItem]) -> list[tuple[FileOutcome, ImagePayload | None]]:
        if self._local is not None:
            return [self._local.process(item) for item in items]
        self._warming.join()
        chunk = max(1, min(32, len(items) // (self.workers * 4) or 1))
        chunks = [items[i:i + chunk] for i in range(0, len(items), chunk)]
        futures = [self._executor.submit(process_items, c) for c in chunks]
        return [outcome for f in futures for outcome in f.result()]

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
