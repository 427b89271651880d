"""Caller side of the CostLedger shards: placement and one coalesced actor call per shard."""
from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from actors.batching import ShardedBatcher
from actors.cost_ledger import KIND, CostLedger, LedgerError, LedgerOptions
from actors.shards import get_or_create, shard_for

Call = tuple[str, str, tuple]
UNAVAILABLE = LedgerError(503, "ledger_unavailable", "the ledger shard is unavailable; nothing was recorded")


def _unwrap(answer: dict[str, Any]) -> Any:
    if "error" in answer:
        error = answer["error"]
        raise LedgerError(error["status"], error["code"], error["message"], **error["details"])
    return answer["ok"]


class CostLedgerClient:
    def __init__(
        self,
        database_url: str,
        shards: int,
        options: LedgerOptions = LedgerOptions(),
        *,
        kind: str = KIND,
        hub: dict[str, Any] | None = None,
    ) -> None:
        self.database_url, self.shards, self.options, self.kind, self.hub = database_url, shards, options, kind, hub
        self._handles: dict[int, Any] = {}
        self._calls = ShardedBatcher(lambda shard: partial(self._flush, shard))

    def shard_of(self, tenant: str) -> int:
        return shard_for(tenant, self.shards)

    def handle(self, shard: int) -> Any:
        if shard not in self._handles:
            self._handles[shard] = get_or_create(CostLedger, self.kind, shard, self.database_url, self.options, self.hub)
        return self._handles[shard]

    async def start(self) -> None:
        await asyncio.gather(*(self.handle(s).ready.remote() for s in range(self.shards)))

    async def _flush(self, shard: int, calls: list[Call]) -> list[dict[str, Any]]:
        try:
            return await self.handle(shard).call_many.remote(calls)
        except RayActorError:
            return [{"error": UNAVAILABLE.to_dict()} for _ in calls]

    async def call(self, method: str, tenant: str, *args: Any) -> Any:
        """One ledger operation; concurrent callers share one actor call per shard."""
        return _unwrap(await self._calls.submit(self.shard_of(tenant), (method, tenant, args)))

    def call_sync(self, method: str, tenant: str, *args: Any, timeout: float = 30.0) -> Any:
        """The same from a thread without an event loop (a crew's LLM calls run in one)."""
        try:
            [answer] = ray.get(self.handle(self.shard_of(tenant)).call_many.remote([(method, tenant, args)]), timeout=timeout)
        except (RayActorError, GetTimeoutError):
            answer = {"error": UNAVAILABLE.to_dict()}
        return _unwrap(answer)

    async def stats(self) -> list[dict[str, Any]]:
        return await asyncio.gather(*(self.handle(s).stats.remote() for s in range(self.shards)))
