"""``dask worker ADDRESS --nthreads 1 --preload tasks.dask_preload``: import at a worker's start what an
ingest task needs (Prefect's task engine, the decoders), so a run's first task does not pay for it."""

import tasks.dask_runner  # noqa: F401  (Prefect, prefect-dask, medmeta.ingest.dask_engine)
from medmeta.ingest.pool import PRELOAD

for _module in PRELOAD:
    __import__(_module)
