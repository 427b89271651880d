"""The group commit of a shard core that changes its memory first and undoes it if the write fails.

A core's operation (a reservation, a sent message, a learned pattern) changes the tenant's state in
memory, then hands its rows to `commit` with a function that takes the change back. Every
operation that arrives while a transaction is in flight joins the next one (actors/substrate/batching.py), so
a busy shard writes one transaction per database round trip, whatever the number of tenants.
`commit` returns once the rows are durable: what the shard acknowledges is stored.

If the transaction fails, every operation of the batch is undone, newest first, before the next
batch is composed (with two in flight, the other one writes none of its rows). Then (actors/substrate/batching.py `commit_failure`):
- the database is away, or this copy of the shard was fenced: each operation answers 503;
- the database refused something in the batch: each operation raises `Refused`, and
  `actors.operations.run_many` runs it again in a transaction of its own, so only the operation
  whose write is bad answers 422 and every other tenant's commits.

A tenant with a commit in flight stays in memory (`in_flight`): reloading it from storage meanwhile
would miss the uncommitted change. `committed(tenant)` waits for the commits in flight now.

The event hub does not use this: its flush assigns the seqs, so it changes nothing in memory unless
the write commits, and it isolates a bad event by halving the batch (Batcher `isolate="split"`).
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Awaitable, Callable, Generic, Hashable, Iterable, TypeVar

from actors.substrate.activation import InFlight
from actors.substrate.batching import Batcher, commit_failure
from actors.substrate.operations import ActorError, refused_commit

W = TypeVar("W")
log = logging.getLogger("raytenant.group_commit")


@dataclass
class Pending(Generic[W]):
    """One operation's share of a group commit: what it writes and how to take its change back."""

    tenant: str
    writes: W
    undo: Callable[[], None]


class GroupCommit(Generic[W]):
    def __init__(self, write: Callable[[list[Pending[W]]], Awaitable[None]], error_class: type[ActorError], *,
                 whole_tenant: bool = False, rows: Callable[[W], Iterable[Hashable]] | None = None) -> None:
        """`write` stores a batch in one transaction. `whole_tenant`: the write snapshots each
        tenant's whole state (the ledger's budgets, learning's patterns), so a batch holds all or
        none of a tenant's pending operations. `rows` names the rows an operation's writes change,
        for cores whose writes are whole when submitted (the mailbox's): then two transactions
        may be in flight, and an operation touching a row of the one in flight waits for it."""
        self._write = write
        self._error_class = error_class
        self._batcher: Batcher[Pending[W], None] = Batcher(
            self._flush, max_batch=2**62 if whole_tenant else 10_000, isolate="retry",
            group=(lambda item: item.tenant) if whole_tenant else None,
            window=2 if rows is not None else 1,
            keys=(lambda item: rows(item.writes)) if rows is not None else None)
        self._committing: dict[str, set[asyncio.Future]] = {}
        self.in_flight = InFlight()

    @property
    def flushes(self) -> int:
        return self._batcher.flushes

    @property
    def isolations(self) -> int:
        """Batches the database refused, whose operations then ran again one by one."""
        return self._batcher.isolations

    async def commit(self, tenant: str, writes: W, undo: Callable[[], None] = lambda: None) -> None:
        """Join the next transaction; returns once it is durable, raises the kind's ActorError (or
        `Refused`, for `run_many` to run the operation again alone) once it is undone."""
        with self.in_flight.hold(tenant):
            commit = asyncio.ensure_future(self._batcher.submit(Pending(tenant, writes, undo)))
            committing = self._committing.setdefault(tenant, set())
            committing.add(commit)
            try:
                await commit
            except Exception as error:
                if commit_failure(error) == "retry":
                    raise
                log.warning("%s commit failed: %r", self._error_class.__name__, error)
                raise refused_commit(error, self._error_class) from error
            finally:
                committing.discard(commit)
                if not committing:
                    self._committing.pop(tenant, None)

    async def committed(self, tenant: str) -> None:
        """Wait until every commit of `tenant` in flight now has finished (stored or undone)."""
        running = self._committing.get(tenant)
        if running:
            await asyncio.wait(set(running))

    async def _flush(self, pending: list[Pending[W]]) -> list[None]:
        try:
            await self._write(pending)
        except BaseException:
            for item in reversed(pending):  # before the next batch is composed
                item.undo()
            raise
        return [None] * len(pending)
