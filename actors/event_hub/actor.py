"""The event hub shard's Ray shell: the core's operations over Ray and over the direct channel,
the retention sweep, and the shard's lease."""
from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any, Awaitable, TypeVar

import ray

from actors.event_hub.core import AppendRequest, EventHubCore, HubOptions, wire_events
from actors.substrate.channel import ChannelServer, channel_host
from actors.substrate.gc_policy import quiet_gc
from actors.substrate.limits import LimitsCache
from actors.substrate.metrics import RayMetrics
from actors.substrate.shard_actor import serving, shard_lease, stored
from storage.engine import create_engine
from storage.events import Event, EventStore

log = logging.getLogger("raytenant.event_hub")
T = TypeVar("T")


@ray.remote(num_cpus=0, max_concurrency=10_000)
class EventHub:
    """Ray shell around EventHubCore: one shard, its own engine, its own event loop.

    The latency-path calls (append, poll, read, heads) are also served on a direct channel
    (actors/substrate/channel.py); they run the same core methods in the same event loop.
    """

    def __init__(self, database_url: str, options: HubOptions = HubOptions()) -> None:
        from storage.limits import LimitsStore

        self.engine = create_engine(database_url)
        self.lease = shard_lease(self.engine)
        self.core = EventHubCore(EventStore(self.engine, self.lease), options, metrics=RayMetrics.for_actor(),
                                 limits=LimitsCache(LimitsStore(self.engine).get_many, options.limits))
        self._retention: asyncio.Task | None = None
        self._secret = secrets.token_hex(16)
        self.channel = ChannelServer(
            {"append": self._wire_append, "append_seqs": self.append_seqs, "poll": self._wire_poll,
             "read": self._wire_read, "heads": self.heads},
            self._secret,
        )
        quiet_gc()

    async def channel_address(self) -> tuple[str, int, str]:
        host, port = await self.channel.start(channel_host())
        return host, port, self._secret

    async def _serve(self, operation: Awaitable[T]) -> T:
        """Run a core operation once this copy holds the shard's lease; an outage or a fence is
        answered as the ActorError (503 storage_unavailable / shard_fenced) clients understand."""
        refusal = await serving(self.lease)
        if refusal is not None:
            operation.close()  # type: ignore[attr-defined]
            raise refusal
        try:
            return await operation
        except Exception as error:
            raise stored(error) from error

    async def _wire_append(self, requests: list[list[Any]]) -> list[list[list[Any]]]:
        stored = await self.append([(tenant, items) for tenant, items in requests])
        return [wire_events(events) for events in stored]

    async def _wire_poll(self, cursors: dict[str, int], timeout: float, poll_id: str | None) -> dict[str, Any]:
        result = await self.poll(cursors, timeout, poll_id)
        return {**result, "events": {t: wire_events(e) for t, e in result["events"].items()}}

    async def _wire_read(self, tenant: str, after: int, flow_ids: list[str] | None, limit: int | None) -> dict[str, Any]:
        result = await self.read(tenant, after, flow_ids, limit)
        return {**result, "events": wire_events(result["events"])}

    async def append(self, requests: list[AppendRequest]) -> list[list[Event]]:
        return await self._serve(self.core.append(requests))

    async def append_seqs(self, requests: list[AppendRequest]) -> list[list[int]]:
        """Like append, answering only the seqs: the actors publishing their events to a stream
        (mailbox, ledger, flows) need nothing else, and encoding each stored event back to them
        was a sixth of the mailbox shard's time."""
        return [[event.seq for event in events] for events in await self.append(requests)]

    async def heads(self, tenants: list[str]) -> dict[str, int]:
        return await self._serve(self.core.heads(tenants))

    async def read(self, tenant: str, after: int, flow_ids: list[str] | None = None, limit: int | None = None):
        return await self._serve(self.core.read(tenant, after, flow_ids=flow_ids, limit=limit))

    async def poll(self, cursors: dict[str, int], timeout: float, poll_id: str | None = None) -> dict[str, Any]:
        return await self._serve(self.core.poll(cursors, timeout, poll_id))

    async def join(self, poll_id: str, cursors: dict[str, int]) -> bool:
        return self.core.join(poll_id, cursors)

    async def report_presence(self, replica: str, counts: dict[str, dict[str, int]]) -> None:
        self.core.report_presence(replica, counts)

    async def presence(self, tenants: list[str]) -> dict[str, dict[str, Any]]:
        return self.core.presence(tenants)

    async def stats(self) -> dict[str, Any]:
        return self.core.stats()

    async def set_limits(self, tenant: str, overrides: dict[str, Any] | None) -> dict[str, Any]:
        return self.core.set_limits(tenant, overrides)

    async def forget(self, tenant: str) -> bool:
        return self.core.forget(tenant)

    async def enforce_retention(self) -> int:
        return await self._serve(self.core.enforce_retention())

    async def _retain_forever(self) -> None:
        while not self.lease.fenced:
            await asyncio.sleep(self.core.options.retention_interval)
            try:
                await self.enforce_retention()
            except Exception as error:  # noqa: BLE001 - storage away: the next round trims
                log.warning("retention sweep failed: %r", error)

    async def ready(self) -> bool:
        refusal = await serving(self.lease)
        if refusal is not None:
            raise refusal
        if self._retention is None or self._retention.done():
            self._retention = asyncio.get_running_loop().create_task(self._retain_forever())
        return True
