"""The mailbox shard's Ray shell: the core's public operations, the redelivery sweep and the
shard's lease; agent_message events go to the tenant's event stream."""
from __future__ import annotations

import ray

from actors.event_hub.client import stream_publisher
from actors.mailbox.core import MailboxCore, MailboxOptions
from actors.substrate.gc_policy import quiet_gc
from actors.substrate.limits import LimitsCache
from actors.substrate.metrics import RayMetrics
from actors.substrate.shard_actor import ShardActor, shard_lease
from storage.engine import create_engine
from storage.mailbox import MailboxStore

PUBLIC_METHODS = frozenset({"forget", "send", "broadcast", "receive", "ack", "ack_many", "set_topics", "get_topics", "request",
                            "dead_letters", "depth", "set_limits"})


@ray.remote(num_cpus=0, max_concurrency=10_000)
class Mailbox(ShardActor):
    """Ray shell: one mailbox shard with its own engine; publishes agent_message events."""

    public = PUBLIC_METHODS

    def __init__(self, database_url: str, options: MailboxOptions = MailboxOptions(), hub: dict | None = None) -> None:
        from storage.limits import LimitsStore

        self.engine = create_engine(database_url)
        self.lease = shard_lease(self.engine)
        self.core = MailboxCore(MailboxStore(self.engine, self.lease), options, notify=stream_publisher(hub, "agent_message"),
                                metrics=RayMetrics.for_actor(),
                                limits=LimitsCache(LimitsStore(self.engine).get_many, options.limits))
        self.sweep = self.core.sweep
        quiet_gc()
