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


def start_forkserver() -> None:
    """Boot the forkserver and its preloaded imports now, in the background (idempotent).

    The CLI calls it before Prefect's API takes its seconds to start, so the ingest's workers fork
    from a warm server instead of waiting for it (about 0.9 s of imports on 2 cores).
    """
    from multiprocessing import forkserver

    multiprocessing.get_context("forkserver").set_forkserver_preload(PRELOAD)
    forkserver.ensure_running()


def balanced_chunks(items: list[InputItem], workers: int, most: int = 32) -> list[list[int]]:
    """Indices of ``items`` in chunks for the pool: largest files first, each chunk about a quarter of
    a worker's share of the bytes (at most ``most`` files), so no worker is left with a long tail."""
    order = sorted(range(len(items)), key=lambda i: (-items[i].size, i))
    target = max(1, sum(item.size for item in items) // (workers * 4))
    chunks, current, size = [], [], 0
    for i in order:
        current.append(i)
        size += items[i].size
        if size >= target or len(current) >= most:
            chunks.append(current)
            current, size = [], 0
    return chunks + ([current] if current else [])


class WorkerPool:
    """``map(items)`` processes a batch of items across ``workers`` processes (1: in-process)."""

    def __init__(self, ctx: WorkerContext, workers: int):
        self.workers = workers
        self._local = Worker(ctx) if workers <= 1 else None
        self._executor = None
        if workers > 1:
            start_forkserver()
            mp = multiprocessing.get_context("forkserver")
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
        chunks = balanced_chunks(items, self.workers)
        futures = [self._executor.submit(process_items, [items[i] for i in c]) for c in chunks]
        results: list = [None] * len(items)
        for chunk, future in zip(chunks, futures):
            for i, result in zip(chunk, future.result()):
                results[i] = result
        return results

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
