"""The ledger shard's Ray shell: the core's public operations, the expiry sweep and the shard's
lease; budget alerts go to the tenant's event stream."""
from __future__ import annotations

import ray

from actors.event_hub.client import stream_publisher
from actors.ledger.core import LedgerCore, LedgerOptions
from actors.substrate.gc_policy import quiet_gc
from actors.substrate.metrics import RayMetrics
from actors.substrate.shard_actor import ShardActor, shard_lease
from storage.engine import create_engine
from storage.ledger import LedgerStore

PUBLIC_METHODS = frozenset(
    {"record_usage", "reserve", "settle", "release", "set_budget", "get_budget", "summary", "recommendations",
     "estimate", "select_model", "prices", "set_override", "delete_override", "set_cap", "month",
     "gateway_begin", "gateway_finish", "gateway_abort", "set_level", "delete_level", "levels", "forget"}
)


@ray.remote(num_cpus=0, max_concurrency=10_000)
class CostLedger(ShardActor):
    """Ray shell: one ledger shard with its own engine; publishes budget alerts to the EventHub."""

    public = PUBLIC_METHODS

    def __init__(self, database_url: str, options: LedgerOptions = LedgerOptions(), hub: dict | None = None) -> None:
        self.engine = create_engine(database_url)
        publish = stream_publisher(hub, "budget_alert")
        notify = (lambda tenant, alert: publish(tenant, [alert])) if publish else None
        self.lease = shard_lease(self.engine)
        self.core = LedgerCore(LedgerStore(self.engine, self.lease), options, notify=notify, metrics=RayMetrics.for_actor())
        self.sweep = self.core.expire
        quiet_gc()
