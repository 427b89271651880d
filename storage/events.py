"""The persisted event log: batched appends, replay pages, and per-tenant bounds.

Every write is one transaction for a whole batch (many tenants, many events): that is what lets the
EventHub acknowledge only committed events and still move tens of thousands of events a second.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Sequence

from sqlalchemy import LargeBinary, Text, cast, delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.leases import ShardLease
from storage.models import EventRow
from storage.pg_arrays import arrays, batch_statements, run_batch, unnest_insert


@dataclass(frozen=True, slots=True)
class Event:
    """A stream event: seq is per tenant and strictly increasing; ts is epoch seconds (UTC)."""

    tenant: str
    seq: int
    type: str
    flow_id: str | None
    data: dict[str, Any] = field(default_factory=dict)
    ts: float = 0.0

    def to_message(self) -> dict[str, Any]:
        """The WebSocket/HTTP form: the tenant is implied by the token, so it is not repeated."""
        return {
            "type": self.type,
            "seq": self.seq,
            "flow_id": self.flow_id,
            "ts": datetime.fromtimestamp(self.ts, timezone.utc).isoformat().replace("+00:00", "Z"),
            "data": self.data,
        }


    def to_wire(self) -> list[Any]:
        """Compact JSON form for the hub channel (actors/substrate/channel.py)."""
        return [self.tenant, self.seq, self.type, self.flow_id, self.data, self.ts]

    @classmethod
    def from_wire(cls, wire: list[Any]) -> "Event":
        return cls(*wire)


@dataclass(frozen=True, slots=True)
class TenantBounds:
    """The newest seq (0 when the tenant has no events) and the oldest seq still stored."""

    head: int
    floor: int


def _to_row(event: Event) -> dict[str, Any]:
    return {
        "tenant": event.tenant,
        "seq": event.seq,
        "type": event.type,
        "flow_id": event.flow_id,
        "data": event.data,
        "ts": datetime.fromtimestamp(event.ts, timezone.utc),
    }


def _from_row(row: Any) -> Event:
    ts = row.ts if row.ts.tzinfo else row.ts.replace(tzinfo=timezone.utc)
    return Event(row.tenant, row.seq, row.type, row.flow_id, row.data, ts.timestamp())


# On PostgreSQL a whole batch is one statement over arrays (storage/pg_arrays.py). Profiling the hub
# showed BEGIN, the insert and COMMIT as three round trips and most of its time per commit.
EVENT_COLUMNS = {"tenant": "VARCHAR", "seq": "BIGINT", "type": "VARCHAR", "flow_id": "VARCHAR",
                 "data": "JSONB_VALUE", "ts": "TIMESTAMPTZ"}
_PG_APPEND = batch_statements(lambda where: {"e": unnest_insert("events", "e", EVENT_COLUMNS, where=where)})


class EventStore:
    """Repository for the events table."""

    def __init__(self, engine: AsyncEngine, lease: ShardLease | None = None) -> None:
        """With a `lease`, every write commits only while this copy of the shard holds it."""
        self.engine = engine
        self.lease = lease
        self._postgres = engine.dialect.name == "postgresql"

    async def append(self, events: Sequence[Event]) -> None:
        """Insert every event atomically; a duplicate (tenant, seq) fails the whole batch."""
        if not events:
            return
        if self._postgres:
            await run_batch(self.engine, self.lease, _PG_APPEND, arrays("e", EVENT_COLUMNS, [_to_row(e) for e in events]))
            return
        async with self.engine.begin() as conn:
            if self.lease is not None:
                await self.lease.hold(conn)
            await conn.execute(insert(EventRow), [_to_row(e) for e in events])

    async def bounds(self, tenants: Iterable[str]) -> dict[str, TenantBounds]:
        """Head and floor of many tenants in one query."""
        tenants = list(tenants)
        found: dict[str, TenantBounds] = {t: TenantBounds(0, 1) for t in tenants}
        if not tenants:
            return found
        query = (
            select(EventRow.tenant, func.max(EventRow.seq), func.min(EventRow.seq))
            .where(EventRow.tenant.in_(tenants))
            .group_by(EventRow.tenant)
        )
        async with self.engine.connect() as conn:
            for tenant, head, floor in await conn.execute(query):
                found[tenant] = TenantBounds(int(head), int(floor))
        return found

    async def read(
        self, tenant: str, after: int, *, limit: int, flow_ids: Iterable[str] | None = None
    ) -> list[Event]:
        """Events with seq > after in seq order. With flow_ids, only those flows and tenant-wide events."""
        query = select(EventRow).where(EventRow.tenant == tenant, EventRow.seq > after)
        if flow_ids is not None:
            query = query.where(EventRow.flow_id.in_(list(flow_ids)) | EventRow.flow_id.is_(None))
        query = query.order_by(EventRow.seq).limit(limit)
        async with self.engine.connect() as conn:
            return [_from_row(row) for row in await conn.execute(query)]

    async def retention_floors(self, tenants: list[str], max_bytes: int, oldest_ts: float) -> dict[str, int]:
        """For tenants under the same retention, in one query: the lowest seq each must keep so
        that its stored events hold at most `max_bytes` of data and none older than `oldest_ts`
        (epoch seconds). A tenant left out of the answer may keep none (its floor is head + 1).
        (A hub sweeps all its tenants every 30 s; one query per tenant was a burst of a thousand.)"""
        if not tenants:
            return {}
        size = (func.octet_length(cast(EventRow.data, Text)) if self._postgres
                else func.length(cast(EventRow.data, LargeBinary)))
        running = select(EventRow.tenant.label("tenant"), EventRow.seq.label("seq"), EventRow.ts.label("ts"),
                         func.sum(size).over(partition_by=EventRow.tenant, order_by=EventRow.seq.desc()).label("total")
                         ).where(EventRow.tenant.in_(tenants)).subquery()
        oldest = datetime.fromtimestamp(max(0.0, oldest_ts), timezone.utc)
        query = (select(running.c.tenant, func.min(running.c.seq))
                 .where(running.c.total <= max_bytes, running.c.ts >= oldest).group_by(running.c.tenant))
        async with self.engine.connect() as conn:
            return {tenant: int(floor) for tenant, floor in (await conn.execute(query)).all()}

    async def trim(self, floors: dict[str, int]) -> None:
        """Delete each tenant's events below its new floor (retention), in one transaction."""
        if not floors:
            return
        async with self.engine.begin() as conn:
            if self.lease is not None:
                await self.lease.hold(conn)
            for tenant, floor in floors.items():
                await conn.execute(delete(EventRow).where(EventRow.tenant == tenant, EventRow.seq < floor))
