"""Natural batching: the coalescing client and the group commit are the same small mechanism.

A Batcher keeps one flush in flight (or up to `window`, see below). Whatever is submitted while it
runs waits and goes out together in the next flush. Under light load a request leaves at once (no
linger); under heavy load batches grow by themselves to match the flush's latency. That is what the machine's physics asks
for: a Ray actor call costs ~2-3 ms whatever it carries, and so does a database commit.

- In a client, the flush is one actor call per shard carrying every concurrent caller's request.
- In a shard actor, the flush is one database transaction (group commit); a submitter's future
  resolves only after that transaction committed, so what the shard acknowledges is durable.

A flush returns one result per item; a result that is an exception fails only its own item. If the
flush raises, nothing of the batch is acknowledged, and what happens next is the group commit's
tenant isolation (`isolate`):

- an outage (the database unreachable, a connection lost, a timeout) fails every item: retrying
  them one by one would only multiply the wait;
- otherwise the database refused something in the batch, most likely one operation's value, and
  one tenant's bad write must not fail another tenant's. With `isolate="split"` (a flush that
  changes nothing in memory unless it commits, like the event hub's) the batch is halved and each
  half flushed again, down to the single item that fails alone: one bad write among n costs
  about 2·log2(n) extra flushes. With `isolate="retry"` (cores that change their memory before the
  commit and undo it when the flush fails) every item fails with `Refused`; `run_many` then runs
  each of those operations again, `solo`, in a batch of its own, so only the bad one fails.

With `window=2`, a second flush starts while the first is in flight, so the database works on one
transaction while the shard composes the next and answers the last: a shard whose commits are
short spends much of a commit's round trip waiting otherwise. Two transactions in flight may commit
in either order, so an item whose `keys` (the rows it writes) meet those of a flush in flight waits
for that flush, and so does every later item sharing a key with it: writes to one row stay in
submission order. Only flushes whose items carry their writes whole may use it (the mailbox's); a
flush that reads shared state when it runs (a tenant's budget snapshot) keeps a window of one.
"""
from __future__ import annotations

import asyncio
import contextvars
from collections import Counter
from typing import Awaitable, Callable, Generic, Hashable, Iterable, Literal, TypeVar

T = TypeVar("T")
R = TypeVar("R")
Flush = Callable[[list[T]], Awaitable[list[R]]]


# Set while `run_many` runs an operation again after its batch was refused: its commits go alone.
SOLO = contextvars.ContextVar("raytenant_solo_commit", default=False)


class Refused(Exception):
    """The database refused the batch this operation joined, and it was undone; run it again alone.
    `cause` is the batch's error (most likely another operation's)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"group commit refused: {cause!r}"[:500])
        self.cause = cause


def commit_failure(error: BaseException) -> Literal["retry", "refused", "outage"]:
    """What a core's commit does with a failed submit: re-raise `Refused` for `run_many` to run the
    operation again alone ("retry"), answer 422 ("refused": the database refused this operation's
    own write, or the tenant's own batch in its solo retry), or answer 503 ("outage": the
    database is away, or this copy of the shard was fenced)."""
    if isinstance(error, Refused):
        return "refused" if SOLO.get() else "retry"
    return "outage" if fails_whole_batch(error) else "refused"


def fails_whole_batch(error: BaseException) -> bool:
    """An outage, or a fenced shard (storage/leases.py): no operation of the batch can commit, so
    isolating one would only multiply the wait."""
    from storage.leases import Fenced

    return isinstance(error, Fenced) or is_outage(error)


def is_outage(error: BaseException) -> bool:
    """True when the database could not be reached or did not answer, as opposed to refusing
    something the batch held."""
    from sqlalchemy import exc

    if isinstance(error, (OSError, asyncio.TimeoutError, exc.TimeoutError)):
        return True
    if isinstance(error, exc.DBAPIError):
        return (bool(error.connection_invalidated) or isinstance(error, (exc.OperationalError, exc.InterfaceError))
                or _sqlstate(error.orig)[:2] in OUTAGE_SQLSTATE_CLASSES)
    return False


# PostgreSQL error classes that say the server cannot serve now, whatever the statement held:
# 08 connection exception, 53 insufficient resources (too many connections, disk full), 57
# operator intervention (shutting down, starting up: "the database system is starting up").
OUTAGE_SQLSTATE_CLASSES = frozenset({"08", "53", "57"})


def _sqlstate(error: BaseException | None) -> str:
    """The SQLSTATE of a driver error (asyncpg's own, or SQLAlchemy's adaptation of it)."""
    for candidate in (error, getattr(error, "__cause__", None)):
        code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(code, str):
            return code
    return ""


class Batcher(Generic[T, R]):
    def __init__(self, flush: Flush, *, max_batch: int = 10_000, linger: float = 0.0,
                 isolate: Literal["split", "retry"] | None = None,
                 group: Callable[[T], Hashable] | None = None, window: int = 1,
                 keys: Callable[[T], Iterable[Hashable]] | None = None) -> None:
        """`group` (with isolate="retry") names the tenant an item belongs to, for cores whose flush
        snapshots a tenant's whole state: a batch then holds all or none of a tenant's pending
        items, and a solo retry goes out with its own tenant's items only. `window` flushes may be
        in flight at once; with more than one, `keys` names the rows an item writes."""
        if window > 1 and keys is None:
            raise ValueError("a window of more than one flush needs the items' keys")
        self._flush = flush
        self._group = group
        self.window = window
        self._keys = keys
        self._flying: set[asyncio.Task] = set()
        self._flying_keys: Counter[Hashable] = Counter()
        self._solos = 0
        self.max_batch = max_batch
        self.linger = linger
        self.isolate = isolate
        self._pending: list[tuple[T, asyncio.Future, bool]] = []
        self._runner: asyncio.Task | None = None
        self.flushes = 0
        self.items = 0
        self.isolations = 0  # batches refused by the database and split or retried

    async def submit(self, item: T) -> R:
        future = asyncio.get_running_loop().create_future()
        solo = self.isolate == "retry" and SOLO.get()
        self._solos += solo
        self._pending.append((item, future, solo))
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run())
        return await future

    async def submit_many(self, items: list[T]) -> list[R]:
        return list(await asyncio.gather(*(self.submit(item) for item in items)))

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _next_batch(self) -> list[tuple[T, asyncio.Future, bool]]:
        """Up to max_batch items in order. A solo item goes out alone, or with its group's items;
        while a group has a solo item waiting, none of its items join other batches."""
        if not self._solos:
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            return self._clear_of_flying(batch) if self._flying_keys else batch
        first, _, first_solo = self._pending[0]
        if self._group is None:
            size = 1 if first_solo else 0
            while size < len(self._pending) and not self._pending[size][2]:
                size += 1
            batch, self._pending = self._pending[:size], self._pending[size:]
        else:
            if first_solo:
                wanted = self._group(first)
                chosen = [self._group(item) == wanted for item, _, _ in self._pending]
            else:
                held = {self._group(item) for item, _, solo in self._pending if solo}
                chosen = [self._group(item) not in held for item, _, _ in self._pending]
            batch = [entry for entry, take in zip(self._pending, chosen) if take]
            self._pending = [entry for entry, take in zip(self._pending, chosen) if not take]
        if self._flying_keys:
            batch = self._clear_of_flying(batch)
        self._solos -= sum(solo for _, _, solo in batch)
        return batch

    def _clear_of_flying(self, batch: list[tuple[T, asyncio.Future, bool]]) -> list[tuple[T, asyncio.Future, bool]]:
        """The items of `batch` that write no row of a flush in flight, nor of an earlier item held
        back; the others go back to the front of the queue, in order."""
        assert self._keys is not None
        blocked = set(self._flying_keys)
        taken, held = [], []
        for entry in batch:
            keys = set(self._keys(entry[0]))
            if keys & blocked:
                blocked |= keys
                held.append(entry)
            else:
                taken.append(entry)
        self._pending[:0] = held
        return taken

    async def _run(self) -> None:
        while self._pending:
            if self.linger:
                await asyncio.sleep(self.linger)
            if self.window == 1:
                await self._flush_batch(self._next_batch())
                continue
            if len(self._flying) >= self.window:
                await asyncio.wait(set(self._flying), return_when=asyncio.FIRST_COMPLETED)
                continue
            batch = self._next_batch()
            if not batch and self._flying:  # every item waits for a row written by a flush in flight
                await asyncio.wait(set(self._flying), return_when=asyncio.FIRST_COMPLETED)
                continue
            self._launch(batch)

    def _launch(self, batch: list[tuple[T, asyncio.Future, bool]]) -> None:
        assert self._keys is not None
        keys = [key for item, _, _ in batch for key in set(self._keys(item))]
        self._flying_keys.update(keys)
        flight = asyncio.create_task(self._flush_batch(batch))
        self._flying.add(flight)

        def landed(task: asyncio.Task) -> None:
            self._flying.discard(task)
            self._flying_keys.subtract(keys)
            self._flying_keys = +self._flying_keys
            if self._pending and (self._runner is None or self._runner.done()):
                self._runner = asyncio.create_task(self._run())
        flight.add_done_callback(landed)

    async def _flush_batch(self, batch: list[tuple[T, asyncio.Future, bool]]) -> None:
        self.flushes += 1
        self.items += len(batch)
        try:
            results = await self._flush([item for item, _, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"flush returned {len(results)} results for {len(batch)} items")
        except BaseException as error:  # noqa: BLE001 - every waiter must hear of the failure
            if isinstance(error, asyncio.CancelledError):
                self._fail(batch, error)
                raise
            if len(batch) > 1 and self.isolate is not None and not fails_whole_batch(error):
                self.isolations += 1
                if self.isolate == "split":
                    middle = len(batch) // 2
                    await self._flush_batch(batch[:middle])
                    await self._flush_batch(batch[middle:])
                    return
                error = Refused(error)
            self._fail(batch, error)
            return
        for (_, future, _), result in zip(batch, results):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    @staticmethod
    def _fail(batch: list[tuple[T, asyncio.Future, bool]], error: BaseException) -> None:
        for _, future, _ in batch:
            if not future.done():
                future.set_exception(error)


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
