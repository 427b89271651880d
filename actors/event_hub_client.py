"""Caller side of the EventHub shards: placement, coalescing, retries.

Concurrent appends and head lookups for tenants of the same shard leave as one actor call (see
actors.batching). Reads and polls are retried while a shard restarts; appends are not, because an
append whose reply was lost may have committed, and a blind retry would publish it twice.
"""
from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import Any, Awaitable, Callable, TypeVar

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from actors.batching import ShardedBatcher
from actors.event_hub import KIND, EventHub, EventIn, HubOptions
from actors.shards import get_or_create, shard_for
from storage.events import Event

log = logging.getLogger("raytenant.event_hub_client")
T = TypeVar("T")


class HubUnavailable(RuntimeError):
    """The shard did not answer; for an append, nothing is acknowledged."""


class EventHubClient:
    def __init__(
        self,
        database_url: str,
        shards: int,
        options: HubOptions = HubOptions(),
        *,
        kind: str = KIND,
        retry_seconds: float = 30.0,
    ) -> None:
        self.database_url = database_url
        self.kind = kind
        self.shards = shards
        self.options = options
        self.retry_seconds = retry_seconds
        self._handles: dict[int, Any] = {}
        self._appends = ShardedBatcher(lambda shard: partial(self._append_flush, shard))
        self._heads = ShardedBatcher(lambda shard: partial(self._heads_flush, shard))

    def shard_of(self, tenant: str) -> int:
        return shard_for(tenant, self.shards)

    def handle(self, shard: int) -> Any:
        handle = self._handles.get(shard)
        if handle is None:
            handle = self._handles[shard] = get_or_create(
                EventHub, self.kind, shard, self.database_url, self.options
            )
        return handle

    async def start(self) -> None:
        """Create every shard (idempotent across replicas) and wait until each answers."""
        await asyncio.gather(*(self.handle(s).ready.remote() for s in range(self.shards)))

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        delay, waited = 0.05, 0.0
        while True:
            try:
                return await call()
            except (RayActorError, GetTimeoutError) as error:
                if waited >= self.retry_seconds:
                    raise HubUnavailable(str(error)) from error
                await asyncio.sleep(delay)
                waited += delay
                delay = min(delay * 2, 1.0)

    # -- appends ----------------------------------------------------------------------------------
    async def append(self, tenant: str, events: list[EventIn]) -> list[int]:
        """Durably append a tenant's events; returns their seqs. Raises HubUnavailable."""
        return [event.seq for event in await self.append_events(tenant, events)]

    async def append_events(self, tenant: str, events: list[EventIn]) -> list[Event]:
        """Like append, but returns the stored events (seq and timestamp assigned)."""
        return await self._appends.submit(self.shard_of(tenant), (tenant, events))

    async def _append_flush(self, shard: int, requests: list[tuple[str, list[EventIn]]]) -> list[list[Event]]:
        try:
            return await self.handle(shard).append.remote(requests)
        except RayActorError as error:
            raise HubUnavailable(f"event hub shard {shard} unavailable: {error}") from error

    # -- reads ------------------------------------------------------------------------------------
    async def head(self, tenant: str) -> int:
        return await self._heads.submit(self.shard_of(tenant), tenant)

    async def _heads_flush(self, shard: int, tenants: list[str]) -> list[int]:
        heads = await self._retrying(lambda: self.handle(shard).heads.remote(tenants))
        return [heads[t] for t in tenants]

    async def read(
        self, tenant: str, after: int, *, flow_ids: list[str] | None = None, limit: int | None = None
    ) -> dict[str, Any]:
        shard = self.shard_of(tenant)
        return await self._retrying(lambda: self.handle(shard).read.remote(tenant, after, flow_ids, limit))

    async def poll(
        self, shard: int, cursors: dict[str, int], timeout: float, poll_id: str | None = None
    ) -> dict[str, Any]:
        return await self._retrying(lambda: self.handle(shard).poll.remote(cursors, timeout, poll_id))

    async def join(self, shard: int, poll_id: str, cursors: dict[str, int]) -> bool:
        """Add tenants to a waiting poll; best effort (False if it already returned or failed)."""
        try:
            return await self.handle(shard).join.remote(poll_id, cursors)
        except RayActorError:
            return False

    async def presence(self, tenant: str) -> dict[str, Any]:
        shard = self.shard_of(tenant)
        found = await self._retrying(lambda: self.handle(shard).presence.remote([tenant]))
        return found[tenant]

    async def report_presence(self, replica: str, counts: dict[str, dict[str, int]]) -> None:
        """Send each shard the counts of its own tenants (every shard hears, so stale counts clear)."""
        by_shard: dict[int, dict[str, dict[str, int]]] = {s: {} for s in range(self.shards)}
        for tenant, tenant_counts in counts.items():
            by_shard[self.shard_of(tenant)][tenant] = tenant_counts
        await asyncio.gather(
            *(self.handle(s).report_presence.remote(replica, c) for s, c in by_shard.items()),
            return_exceptions=True,
        )

    async def stats(self) -> list[dict[str, Any]]:
        return await asyncio.gather(*(self.handle(s).stats.remote() for s in range(self.shards)))
