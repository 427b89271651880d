"""FlowRunner: the Ray shell around FlowRunnerCore (actors/flows/core.py), one per runner shard.

crewai is imported inside the actor only (it takes seconds), so the ingress can hold a client
without it. A restarted runner calls itself once from its constructor so that it resumes its
unfinished flows at once, not when someone next happens to call it.
"""
from __future__ import annotations

import os
import threading
from typing import Any

import ray

from actors.flows.options import FlowOptions, KIND
from actors.substrate.gc_policy import quiet_gc
from actors.substrate.metrics import RayMetrics
from actors.substrate.os_priority import lower_priority
from actors.substrate.shard_actor import ShardActor, serving, shard_lease

PUBLIC_METHODS = frozenset({"create", "get", "list", "cancel", "correct", "set_limits", "suspend", "resume_tenant",
                            "forget"})


@ray.remote(num_cpus=0, max_concurrency=1_000)
class FlowRunner(ShardActor):
    public = PUBLIC_METHODS

    def __init__(self, database_url: str, options: FlowOptions, services: dict[str, dict[str, Any]]) -> None:
        import crews  # noqa: F401 - crewai's telemetry off before it is imported
        from actors.ledger.client import CostLedgerClient
        from actors.event_hub.client import EventHubClient
        from actors.flows.core import FlowRunnerCore, Services
        from actors.learning.client import LearningClient
        from actors.mailbox.client import MailboxClient
        from actors.substrate.limits import LimitsCache
        from storage.engine import create_engine
        from storage.flows import FlowStore
        from storage.limits import LimitsStore

        name = ray.get_runtime_context().get_actor_name() or f"{KIND}-0"
        engine = create_engine(database_url)
        self.lease = shard_lease(engine)
        self.core = FlowRunnerCore(
            FlowStore(engine, self.lease),
            Services(hub=EventHubClient(**services["hub"]), ledger=CostLedgerClient(**services["ledger"]),
                     learning=LearningClient(**services["learning"]), mailbox=MailboxClient(**services["mailbox"])),
            options, index=int(name.rsplit("-", 1)[1]), metrics=RayMetrics.for_actor(),
            limits=LimitsCache(LimitsStore(engine).get_many, options.limits),
        )
        self.sweep = self.core.resume
        quiet_gc()
        lower_priority(options.niceness)
        me = ray.get_runtime_context().current_actor
        threading.Thread(target=lambda: ray.get(me.ready.remote()), daemon=True, name="resume").start()

    async def ready(self) -> bool:
        refusal = await serving(self.lease)  # the lease before the flows are read and resumed
        if refusal is not None:
            raise refusal
        if not self.core.resumed.is_set() and not getattr(self, "_resuming", False):
            self._resuming = True
            await self.core.resume()
        self._ensure_sweeper()
        return True

    async def stats(self) -> dict[str, Any]:
        return {**await self.core.stats(), "niceness": os.getpriority(os.PRIO_PROCESS, 0)}
