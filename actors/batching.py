"""Natural batching: the coalescing client and the group commit are the same small mechanism.

A Batcher keeps at most one flush in flight. Whatever is submitted while it runs waits and goes out
together in the next flush. Under light load a request leaves at once (no linger); under heavy load
batches grow by themselves to match the flush's latency. That is what the machine's physics asks
for: a Ray actor call costs ~2-3 ms whatever it carries, and so does a database commit.

- In a client, the flush is one actor call per shard carrying every concurrent caller's request.
- In a shard actor, the flush is one database transaction (group commit); a submitter's future
  resolves only after that transaction committed, so what the shard acknowledges is durable.

A flush returns one result per item; a result that is an exception fails only its own item. If the
flush raises, every item of the batch fails with that error and nothing of it is acknowledged.
"""
from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Generic, Hashable, TypeVar

T = TypeVar("T")
R = TypeVar("R")
Flush = Callable[[list[T]], Awaitable[list[R]]]


class Batcher(Generic[T, R]):
    def __init__(self, flush: Flush, *, max_batch: int = 10_000, linger: float = 0.0) -> None:
        self._flush = flush
        self.max_batch = max_batch
        self.linger = linger
        self._pending: list[tuple[T, asyncio.Future]] = []
        self._runner: asyncio.Task | None = None
        self.flushes = 0
        self.items = 0

    async def submit(self, item: T) -> R:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run())
        return await future

    async def submit_many(self, items: list[T]) -> list[R]:
        return list(await asyncio.gather(*(self.submit(item) for item in items)))

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def _run(self) -> None:
        while self._pending:
            if self.linger:
                await asyncio.sleep(self.linger)
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            self.flushes += 1
            self.items += len(batch)
            try:
                results = await self._flush([item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"flush returned {len(results)} results for {len(batch)} items")
            except BaseException as error:  # noqa: BLE001 - every waiter must hear of the failure
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                if isinstance(error, asyncio.CancelledError):
                    raise
                continue
            for (_, future), result in zip(batch, results):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)


class ShardedBatcher(Generic[T, R]):
    """One Batcher per shard key: concurrent callers become one call per shard."""

    def __init__(self, flush_for: Callable[[Hashable], Flush], **options) -> None:
        self._flush_for = flush_for
        self._options = options
        self._batchers: dict[Hashable, Batcher[T, R]] = {}

    def batcher(self, key: Hashable) -> Batcher[T, R]:
        batcher = self._batchers.get(key)
        if batcher is None:
            batcher = self._batchers[key] = Batcher(self._flush_for(key), **self._options)
        return batcher

    async def submit(self, key: Hashable, item: T) -> R:
        return await self.batcher(key).submit(item)
