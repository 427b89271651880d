"""Shard leases: fencing, so that a stale copy of a shard can never commit.

Ray names a shard actor once in the cluster, but two copies of one shard can still be alive: a
node is partitioned away, Ray restarts its shards elsewhere, and the partitioned node comes back
with the old copies still running and still reachable by clients that held their handles or
channels. Both copies would then hand out the same event seqs, admit spend against the same budget
from two views of it, and move the same messages.

A lease row per shard settles who may write. A copy takes the lease when it starts, before it loads
any tenant: the row's epoch goes one up, which fences every earlier copy. Every write transaction
of a copy first checks, in the same transaction, that the row still holds its epoch, and locks the
row while it writes:

- PostgreSQL: `SELECT … FOR SHARE`. A newer copy's epoch bump waits for writes in flight; a write
  that starts after the bump re-reads the row, finds another epoch and writes nothing. So every
  write of the old copy committed before the new copy took the lease, and the new copy's loads,
  which come after, see all of it.
- SQLite: a no-op `UPDATE` of the row as the transaction's first statement, which takes the
  database's write lock and reads the newest epoch under it.

A write that finds another epoch raises `Fenced`, and the lease stays fenced: the copy stops
serving (actors/substrate/shard_actor.py).
"""
from __future__ import annotations

import asyncio
import os
import socket
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

_TAKE = text(
    "INSERT INTO shard_leases (shard, epoch, holder, taken_at) VALUES (:shard, 1, :holder, :now) "
    "ON CONFLICT (shard) DO UPDATE SET epoch = shard_leases.epoch + 1, holder = excluded.holder, "
    "taken_at = excluded.taken_at RETURNING epoch"
)
_PG_HOLD = text("SELECT 1 FROM shard_leases WHERE shard = :lease_shard AND epoch = :lease_epoch FOR SHARE")
_SQLITE_HOLD = text("UPDATE shard_leases SET epoch = epoch WHERE shard = :lease_shard AND epoch = :lease_epoch")

# For the single-statement writes on PostgreSQL (events, ledger): a CTE the statement's inserts
# depend on. It is evaluated once per statement, so the statement writes all or nothing.
PG_LEASE_CTE = "lease AS (SELECT 1 AS held FROM shard_leases WHERE shard = :lease_shard AND epoch = :lease_epoch FOR SHARE)"
PG_LEASE_HELD = "EXISTS (SELECT 1 FROM lease)"


class Fenced(Exception):
    """A newer copy of this shard took its lease: this copy may not write, and stops serving."""

    def __init__(self, shard: str, epoch: int | None) -> None:
        super().__init__(f"shard {shard} at epoch {epoch} was replaced by a newer copy")
        self.shard, self.epoch = shard, epoch


def holder_name() -> str:
    """Who took a lease, for the operator reading the table: host and process."""
    return f"{socket.gethostname()}:{os.getpid()}"[:200]


class ShardLease:
    """This copy's lease on `shard`. `acquire` before loading anything; `hold(conn)` as the first
    statement of every write transaction; `params()` for the single-statement writes."""

    def __init__(self, engine: AsyncEngine, shard: str, holder: str | None = None) -> None:
        self.engine, self.shard, self.holder = engine, shard, holder or holder_name()
        self.epoch: int | None = None
        self.fenced = False
        self._postgres = engine.dialect.name == "postgresql"
        self._lock: asyncio.Lock | None = None

    async def acquire(self) -> int:
        """Take the lease once (later calls return the epoch): every earlier copy is fenced from
        the moment this commits. Raises `Fenced` once a newer copy took it from this one."""
        if self.fenced:
            raise Fenced(self.shard, self.epoch)
        if self.epoch is not None:
            return self.epoch
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self.epoch is None:
                async with self.engine.begin() as conn:
                    found = await conn.execute(_TAKE, {"shard": self.shard, "holder": self.holder,
                                                       "now": datetime.now(timezone.utc)})
                    self.epoch = int(found.scalar_one())
        return self.epoch

    def params(self) -> dict[str, Any]:
        if self.fenced or self.epoch is None:
            raise Fenced(self.shard, self.epoch)
        return {"lease_shard": self.shard, "lease_epoch": self.epoch}

    async def hold(self, conn: AsyncConnection) -> None:
        """In a write transaction, before its writes: check and lock this copy's epoch."""
        statement = _PG_HOLD if self._postgres else _SQLITE_HOLD
        result = await conn.execute(statement, self.params())
        held = result.first() is not None if self._postgres else result.rowcount == 1
        if not held:
            self.lost()

    def lost(self) -> None:
        """A write found another epoch: fenced for good."""
        self.fenced = True
        raise Fenced(self.shard, self.epoch)
