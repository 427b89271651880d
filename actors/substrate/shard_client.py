"""Caller side of a sharded actor kind: placement and one coalesced actor call per shard."""
from __future__ import annotations

import asyncio
import os
from functools import partial
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from actors.substrate.batching import ShardedBatcher
from actors.substrate.channel import ChannelClient, ChannelError
from actors.substrate.operations import ActorError, Call
from actors.substrate.placement import get_or_create, shard_for, wait_ready


class ShardClient:
    """`call(method, tenant, *args)` reaches the tenant's shard; concurrent callers share one
    `call_many` per shard. An unreachable shard answers `503 <unavailable_code>`."""

    error_class: type[ActorError] = ActorError
    unavailable_code = "shard_unavailable"
    # Operations whose arguments and answers are plain JSON go over the shard's direct channel
    # (ShardActor.channel_address); the rest, and every call when RAYTENANT_SHARD_CHANNEL=0, as
    # Ray actor calls. Either way they reach the same call_many in the same event loop.
    channel_methods: frozenset[str] = frozenset()
    channel_timeout = 60.0
    # Calls in flight per shard. With two, the callers that arrive while one call is out go in a
    # second at once instead of waiting for the first's answer, so the shard's group commit gets
    # the next batch while it commits this one. Concurrent callers never had an order between them.
    calls_in_flight = 1

    def __init__(self, actor_class: Any, kind: str, shards: int, *init_args: Any) -> None:
        self.actor_class, self.kind, self.shards, self.init_args = actor_class, kind, shards, init_args
        self._handles: dict[int, Any] = {}
        self._calls = ShardedBatcher(lambda shard: partial(self._flush, shard), window=self.calls_in_flight,
                                     keys=(lambda call: ()) if self.calls_in_flight > 1 else None)
        self.use_channel = bool(self.channel_methods) and os.environ.get("RAYTENANT_SHARD_CHANNEL", "1") != "0"
        self._channels: dict[int, ChannelClient] = {}
        self._channel_locks: dict[int, asyncio.Lock] = {}

    def shard_of(self, tenant: str) -> int:
        return shard_for(tenant, self.shards)

    def handle(self, shard: int) -> Any:
        if shard not in self._handles:
            self._handles[shard] = get_or_create(self.actor_class, self.kind, shard, *self.init_args)
        return self._handles[shard]

    async def start(self, timeout: float = 60.0) -> None:
        """Create every shard (idempotent across replicas) and wait until each answers."""
        await wait_ready([self.handle(s) for s in range(self.shards)], timeout)

    def _unavailable(self) -> dict[str, Any]:
        error = self.error_class(503, self.unavailable_code, "the shard is unavailable; nothing was changed")
        return {"error": error.to_dict()}

    async def _flush(self, shard: int, calls: list[Call]) -> list[dict[str, Any]]:
        answers = await self._send(shard, calls)
        if any(answer.get("error", {}).get("code") == "shard_fenced" for answer in answers):
            self._drop_shard(shard)
        return answers

    def _drop_shard(self, shard: int) -> None:
        """This copy of the shard was fenced (storage/leases.py): the next call looks the shard up
        by name again and reaches the copy that holds the lease."""
        self._handles.pop(shard, None)
        channel = self._channels.pop(shard, None)
        if channel is not None:
            asyncio.ensure_future(channel.close())

    async def _send(self, shard: int, calls: list[Call]) -> list[dict[str, Any]]:
        if not self.use_channel:
            return await self._over_ray(shard, calls)
        direct = [i for i, call in enumerate(calls) if call[0] in self.channel_methods]
        if not direct:
            return await self._over_ray(shard, calls)
        rest = [i for i in range(len(calls)) if i not in set(direct)]
        answers: list[dict[str, Any] | None] = [None] * len(calls)
        parts = await asyncio.gather(self._over_channel(shard, [calls[i] for i in direct]),
                                     self._over_ray(shard, [calls[i] for i in rest]) if rest else asyncio.sleep(0, []))
        for indexes, found in zip((direct, rest), parts):
            for i, answer in zip(indexes, found):
                answers[i] = answer
        return answers  # type: ignore[return-value]

    async def _over_ray(self, shard: int, calls: list[Call]) -> list[dict[str, Any]]:
        try:
            return await self.handle(shard).call_many.remote(calls)
        except RayActorError:
            return [self._unavailable() for _ in calls]

    async def _channel(self, shard: int) -> ChannelClient:
        channel = self._channels.get(shard)
        if channel is not None and not channel.closed:
            return channel
        async with self._channel_locks.setdefault(shard, asyncio.Lock()):
            channel = self._channels.get(shard)
            if channel is None or channel.closed:
                host, port, secret = await self.handle(shard).channel_address.remote()
                channel = self._channels[shard] = await ChannelClient(host, port, secret).connect()
        return channel

    async def _over_channel(self, shard: int, calls: list[Call]) -> list[dict[str, Any]]:
        """A broken channel (the shard restarted) answers 503 like a dead actor; the next call
        connects again. A lost reply may hide a commit: retry with the same idempotency key."""
        try:
            channel = await self._channel(shard)
            return await asyncio.wait_for(channel.call("call_many", calls), self.channel_timeout)
        except (ChannelError, OSError, asyncio.TimeoutError, RayActorError):
            return [self._unavailable() for _ in calls]

    def _unwrap(self, answer: dict[str, Any]) -> Any:
        if "error" in answer:
            error = answer["error"]
            raise self.error_class(error["status"], error["code"], error["message"], **error["details"])
        return answer["ok"]

    async def call(self, method: str, tenant: str, *args: Any) -> Any:
        return self._unwrap(await self._calls.submit(self.shard_of(tenant), (method, tenant, args)))

    async def call_alone(self, method: str, tenant: str, *args: Any) -> Any:
        """An operation that may wait long (a long poll): its own actor call, so it never holds
        back the batch of quick operations it would otherwise share."""
        return self._unwrap((await self._flush(self.shard_of(tenant), [(method, tenant, args)]))[0])

    def call_sync(self, method: str, tenant: str, *args: Any, timeout: float = 30.0) -> Any:
        """The same from a thread without an event loop (a crew's LLM calls run in one)."""
        try:
            [answer] = ray.get(self.handle(self.shard_of(tenant)).call_many.remote([(method, tenant, args)]), timeout=timeout)
        except (RayActorError, GetTimeoutError):
            answer = self._unavailable()
        return self._unwrap(answer)

    async def stats(self) -> list[dict[str, Any]]:
        return await asyncio.gather(*(self.handle(s).stats.remote() for s in range(self.shards)))
