"""Caller side of the EventHub shards: placement, coalescing, the direct channel, retries.

Concurrent appends and head lookups for tenants of the same shard leave as one call (see
actors.substrate.batching). The latency-path calls go over the shard's direct channel when it is enabled
(actors/substrate/channel.py), else as Ray actor calls; both reach the same core methods.

Reads and polls are retried while a shard restarts; appends are not, because an append whose reply
was lost may have committed, and a blind retry would publish it twice.
"""
from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import Any, Awaitable, Callable, TypeVar

from ray.exceptions import GetTimeoutError, RayActorError

from actors.event_hub.actor import EventHub
from actors.event_hub.core import KIND, EventIn, HubOptions, unwire_events
from actors.substrate.batching import ShardedBatcher
from actors.substrate.channel import ChannelClient, ChannelError
from actors.substrate.operations import ActorError
from actors.substrate.placement import get_or_create, shard_for, wait_ready
from storage.events import Event

log = logging.getLogger("raytenant.event_hub_client")
T = TypeVar("T")
UNAVAILABLE = (RayActorError, GetTimeoutError, ChannelError, OSError, asyncio.TimeoutError)

# How each latency-path call's channel reply becomes what the Ray call would have returned.
_DECODE: dict[str, Callable[[Any], Any]] = {
    "append": lambda raw: [unwire_events(events) for events in raw],
    "append_seqs": lambda raw: raw,
    "poll": lambda raw: {**raw, "events": {t: unwire_events(e) for t, e in raw["events"].items()}},
    "read": lambda raw: {**raw, "events": unwire_events(raw["events"])},
    "heads": lambda raw: raw,
}


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
        use_channel: bool = True,
        retry_seconds: float = 30.0,
        call_timeout: float = 30.0,
    ) -> None:
        self.database_url = database_url
        self.shards = shards
        self.options = options
        self.kind = kind
        self.use_channel = use_channel
        self.retry_seconds = retry_seconds
        self.call_timeout = call_timeout
        self._handles: dict[int, Any] = {}
        self._channels: dict[int, ChannelClient] = {}
        self._channel_locks: dict[int, asyncio.Lock] = {}
        self._appends = ShardedBatcher(lambda shard: partial(self._append_flush, shard, "append"))
        self._seq_appends = ShardedBatcher(lambda shard: partial(self._append_flush, shard, "append_seqs"))
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

    async def start(self, timeout: float = 60.0) -> None:
        """Create every shard (idempotent across replicas) and wait until each answers."""
        await wait_ready([self.handle(s) for s in range(self.shards)], timeout)

    async def _channel(self, shard: int) -> ChannelClient:
        channel = self._channels.get(shard)
        if channel is not None and not channel.closed:
            return channel
        lock = self._channel_locks.setdefault(shard, asyncio.Lock())
        async with lock:
            channel = self._channels.get(shard)
            if channel is None or channel.closed:
                host, port, secret = await self.handle(shard).channel_address.remote()
                channel = self._channels[shard] = await ChannelClient(host, port, secret).connect()
        return channel

    async def _call(self, shard: int, method: str, *args: Any, timeout: float | None = None) -> Any:
        """One latency-path call, over the channel when enabled, else as a Ray actor call."""
        if not self.use_channel:
            return await getattr(self.handle(shard), method).remote(*args)
        channel = await self._channel(shard)
        raw = await asyncio.wait_for(channel.call(method, *args), timeout or self.call_timeout)
        return _DECODE[method](raw)

    def _drop_shard(self, shard: int) -> None:
        """Drop the handle and channel of a shard whose copy was fenced (storage/leases.py): the
        next call looks the shard up by name again and reaches the copy that holds the lease."""
        self._handles.pop(shard, None)
        channel = self._channels.pop(shard, None)
        if channel is not None:
            asyncio.ensure_future(channel.close())

    async def _retrying(self, call: Callable[[], Awaitable[T]], shard: int) -> T:
        """Retried while the shard restarts or was replaced; a database outage is answered at once
        (503 storage_unavailable), since waiting here would hold the request past its deadline."""
        delay, waited = 0.05, 0.0
        while True:
            try:
                return await call()
            except (*UNAVAILABLE, ActorError) as error:
                if isinstance(error, ActorError) and error.code != "shard_fenced":
                    raise
                if isinstance(error, ActorError):
                    self._drop_shard(shard)
                if waited >= self.retry_seconds:
                    raise HubUnavailable(str(error)) from error
                await asyncio.sleep(delay)
                waited += delay
                delay = min(delay * 2, 1.0)

    # -- appends ----------------------------------------------------------------------------------
    async def append(self, tenant: str, events: list[EventIn]) -> list[int]:
        """Durably append a tenant's events; returns their seqs. Raises HubUnavailable."""
        return await self._seq_appends.submit(self.shard_of(tenant), (tenant, events))

    async def append_events(self, tenant: str, events: list[EventIn]) -> list[Event]:
        """Like append, but returns the stored events (seq and timestamp assigned)."""
        return await self._appends.submit(self.shard_of(tenant), (tenant, events))

    async def _append_flush(self, shard: int, method: str, requests: list[tuple[str, list[EventIn]]]) -> list[Any]:
        try:
            return await self._call(shard, method, requests)
        except UNAVAILABLE as error:
            raise HubUnavailable(f"event hub shard {shard} unavailable: {error}") from error
        except ActorError as error:
            if error.code == "shard_fenced":
                self._drop_shard(shard)
            raise

    # -- reads ------------------------------------------------------------------------------------
    async def head(self, tenant: str) -> int:
        return await self._heads.submit(self.shard_of(tenant), tenant)

    async def _heads_flush(self, shard: int, tenants: list[str]) -> list[int]:
        heads = await self._retrying(lambda: self._call(shard, "heads", tenants), shard)
        return [heads[t] for t in tenants]

    async def read(
        self, tenant: str, after: int, *, flow_ids: list[str] | None = None, limit: int | None = None
    ) -> dict[str, Any]:
        shard = self.shard_of(tenant)
        return await self._retrying(lambda: self._call(shard, "read", tenant, after, flow_ids, limit), shard)

    async def poll(
        self, shard: int, cursors: dict[str, int], timeout: float, poll_id: str | None = None
    ) -> dict[str, Any]:
        return await self._retrying(
            lambda: self._call(shard, "poll", cursors, timeout, poll_id, timeout=timeout + self.call_timeout), shard
        )

    async def join(self, shard: int, poll_id: str, cursors: dict[str, int]) -> bool:
        """Add tenants to a waiting poll; best effort (False if it already returned or failed)."""
        try:
            return await self.handle(shard).join.remote(poll_id, cursors)
        except RayActorError:
            return False

    async def presence(self, tenant: str) -> dict[str, Any]:
        shard = self.shard_of(tenant)
        found = await self._retrying(lambda: self.handle(shard).presence.remote([tenant]), shard)
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

    async def set_limits(self, tenant: str, overrides: dict[str, Any] | None) -> dict[str, Any]:
        """The operator's change of the tenant's limits, for its shard's retention."""
        shard = self.shard_of(tenant)
        return await self._retrying(lambda: self.handle(shard).set_limits.remote(tenant, overrides), shard)

    async def forget(self, tenant: str) -> bool:
        """Drop the tenant from its shard's memory (after a purge or an import)."""
        shard = self.shard_of(tenant)
        return await self._retrying(lambda: self.handle(shard).forget.remote(tenant), shard)

    async def stats(self) -> list[dict[str, Any]]:
        return await asyncio.gather(*(self.handle(s).stats.remote() for s in range(self.shards)))

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()


def stream_publisher(hub: dict[str, Any] | None, event_type: str) -> Callable[[str, list[dict]], Awaitable[Any]] | None:
    """`publish(tenant, datas)` appending events of `event_type` to the tenant's stream."""
    if hub is None:
        return None
    client = EventHubClient(**hub)

    async def publish(tenant: str, datas: list[dict[str, Any]]) -> None:
        await client.append(tenant, [{"type": event_type, "flow_id": None, "data": d} for d in datas])

    return publish
