"""The quota shard's Ray shell: the core's public operations. It holds no lease: its buckets
live in memory and it only reads the limits table (docs/architecture.md, "Fencing")."""
from __future__ import annotations

import ray

from actors.quotas.core import QuotaCore, QuotaOptions
from actors.substrate.gc_policy import quiet_gc
from actors.substrate.limits import LimitsCache
from actors.substrate.metrics import RayMetrics
from actors.substrate.shard_actor import ShardActor

PUBLIC_METHODS = frozenset({"forget", "lease", "acquire", "release", "hold", "set_limits", "get_limits", "usage"})


@ray.remote(num_cpus=0, max_concurrency=10_000)
class Quotas(ShardActor):
    """Ray shell: one quota shard; it reads tenants' limits from the tenant_limits table."""

    public = PUBLIC_METHODS

    def __init__(self, database_url: str, options: QuotaOptions = QuotaOptions()) -> None:
        from storage.engine import create_engine
        from storage.limits import LimitsStore

        store = LimitsStore(create_engine(database_url))
        self.core = QuotaCore(LimitsCache(store.get_many, options.limits, ttl=options.limits_ttl), options,
                              metrics=RayMetrics.for_actor())
        quiet_gc()
