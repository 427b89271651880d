"""FlowRunner: the Ray shell around FlowRunnerCore (actors/flow_runs.py), one per runner shard.

crewai is imported inside the actor only (it takes seconds), so the ingress can hold a client
without it. A restarted runner calls itself once from its constructor so that it resumes its
unfinished flows at once, not when someone next happens to call it.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

import ray

from actors.gc_policy import quiet_gc
from actors.os_priority import lower_priority
from actors.limits import Limits
from actors.metrics import RayMetrics
from actors.shard_actor import ShardActor, serving, shard_lease

KIND = "flows"
PUBLIC_METHODS = frozenset({"create", "get", "list", "cancel", "correct", "set_limits", "suspend", "resume_tenant",
                            "forget"})


@dataclass(frozen=True)
class FlowOptions:
    limits: Limits = Limits()  # the deployment's defaults: running and queued flows, flow weight
    threads: int = 32  # flows running at once in one runner, all tenants together; more are queued
    llm: str = ""  # RAYTENANT_LLM: empty or "offline" for the OfflineLLM, else a provider model string
    llm_latency: float = 0.0  # the OfflineLLM's simulated provider latency per call, in seconds
    llm_providers: str = ""  # RAYTENANT_LLM_PROVIDERS: where a provider model string is called
    sweep_interval: float = 5.0  # how often a runner looks for unfinished flows it owns and no one runs
    max_attempts: int = 5  # starts of one flow (first run and resumes) before it fails as too_many_attempts
    shards: int = 1
    kind: str = KIND  # the runners' actor kind (with the deployment's prefix): whose flows are whose
    niceness: int = 10  # RAYTENANT_FLOW_NICENESS: flows yield the CPU to requests (actors/os_priority.py)


@ray.remote(num_cpus=0, max_concurrency=1_000)
class FlowRunner(ShardActor):
    public = PUBLIC_METHODS

    def __init__(self, database_url: str, options: FlowOptions, services: dict[str, dict[str, Any]]) -> None:
        import crews  # noqa: F401 - crewai's telemetry off before it is imported
        from actors.cost_ledger_client import CostLedgerClient
        from actors.event_hub_client import EventHubClient
        from actors.flow_runs import FlowRunnerCore, Services
        from actors.learning_client import LearningClient
        from actors.mailbox_client import MailboxClient
        from actors.limits import LimitsCache
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
            limits=LimitsCache(LimitsStore(engine).get, options.limits),
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
