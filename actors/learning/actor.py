"""The learning shard's Ray shell: the core's public operations and the shard's lease."""
from __future__ import annotations

import ray

from actors.learning.core import LearningCore, LearningOptions
from actors.substrate.gc_policy import quiet_gc
from actors.substrate.limits import LimitsCache
from actors.substrate.metrics import RayMetrics
from actors.substrate.shard_actor import ShardActor, shard_lease
from storage.engine import create_engine
from storage.patterns import PatternStore

PUBLIC_METHODS = frozenset({"decide", "forget", "learn", "learn_from_correction", "learn_from_success", "feedback", "recommendations",
                            "recommendations_many", "corrections", "mapping_lessons", "stats_for", "set_limits"})


@ray.remote(num_cpus=0, max_concurrency=10_000)
class LearningModel(ShardActor):
    """Ray shell: one learning shard with its own engine."""

    public = PUBLIC_METHODS

    def __init__(self, database_url: str, options: LearningOptions = LearningOptions()) -> None:
        from storage.limits import LimitsStore

        self.engine = create_engine(database_url)
        self.lease = shard_lease(self.engine)
        self.core = LearningCore(PatternStore(self.engine, self.lease), options, metrics=RayMetrics.for_actor(),
                                 limits=LimitsCache(LimitsStore(self.engine).get_many, options.limits))
        quiet_gc()
