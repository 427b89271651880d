"""Caller side of a sharded actor kind: placement and one coalesced actor call per shard."""
from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from actors.batching import ShardedBatcher
from actors.operations import ActorError, Call
from actors.shards import get_or_create, shard_for, wait_ready


class ShardClient:
    """`call(method, tenant, *args)` reaches the tenant's shard; concurrent callers share one
    `call_many` per shard. An unreachable shard answers `503 <unavailable_code>`."""

    error_class: type[ActorError] = ActorError
    unavailable_code = "shard_unavailable"

    def __init__(self, actor_class: Any, kind: str, shards: int, *init_args: Any) -> None:
        self.actor_class, self.kind, self.shards, self.init_args = actor_class, kind, shards, init_args
        self._handles: dict[int, Any] = {}
        self._calls = ShardedBatcher(lambda shard: partial(self._flush, shard))

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
        try:
            return await self.handle(shard).call_many.remote(calls)
        except RayActorError:
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
