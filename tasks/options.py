"""Options every medmeta task shares.

Task results are never cached or persisted by Prefect: they can hold paths from the landing
zone, and the store, not Prefect's result storage, is where data lives.
"""

from prefect.cache_policies import NO_CACHE

NO_RESULTS = dict(cache_policy=NO_CACHE, persist_result=False)
