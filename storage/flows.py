"""Repository for flows: a row per flow, updated as each phase finishes."""
from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from storage.leases import ShardLease
from storage.models import FlowRow, TenantRow

ACTIVE = ("queued", "initialized", "running", "suspended")  # not ended: a suspended flow resumes with its tenant
SUMMARY_COLUMNS = [c for c in FlowRow.__table__.columns if c.name not in ("input", "results")]


class FlowStore:
    def __init__(self, engine: AsyncEngine, lease: ShardLease | None = None) -> None:
        """With a `lease`, every write commits only while this copy of the shard holds it."""
        self.engine = engine
        self.lease = lease

    @asynccontextmanager
    async def _writing(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.begin() as conn:
            if self.lease is not None:
                await self.lease.hold(conn)
            yield conn

    async def create(self, row: dict[str, Any]) -> None:
        async with self._writing() as conn:
            await conn.execute(insert(FlowRow), [row])

    async def update(self, flow_id: str, *, while_active: bool = True, **values: Any) -> bool:
        """Update a flow; by default only while it has not ended, so a flow leaves the active
        states once (a cancel racing a completion, or a late phase write after a cancel, changes
        nothing). Returns whether the row was updated."""
        query = update(FlowRow).where(FlowRow.id == flow_id)
        if while_active:
            query = query.where(FlowRow.status.in_(ACTIVE))
        async with self._writing() as conn:
            return (await conn.execute(query.values(**values))).rowcount == 1

    async def get(self, tenant: str, flow_id: str) -> dict[str, Any] | None:
        query = select(FlowRow).where(FlowRow.id == flow_id, FlowRow.tenant == tenant)
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        return dict(row) if row else None

    async def list(self, tenant: str, status: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """The tenant's newest flows, without their input and results (which can be large)."""
        query = select(*SUMMARY_COLUMNS).where(FlowRow.tenant == tenant)
        if status:
            query = query.where(FlowRow.status == status)
        query = query.order_by(FlowRow.created_at.desc(), FlowRow.id).limit(limit)
        async with self.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(query)).mappings()]

    async def list_full(self, tenant: str, status: str, runner: str) -> list[dict[str, Any]]:
        """The tenant's flows of this runner kind in `status`, oldest first, with input and results."""
        query = select(FlowRow).where(FlowRow.tenant == tenant, FlowRow.status == status, FlowRow.runner == runner)
        async with self.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(query.order_by(FlowRow.created_at, FlowRow.id))).mappings()]

    async def active(self, runner: str) -> list[dict[str, Any]]:
        """Every flow of this runner kind that has not ended, oldest first: what runners resume."""
        query = (select(FlowRow).where(FlowRow.runner == runner, FlowRow.status.in_(ACTIVE))
                 .order_by(FlowRow.created_at, FlowRow.id))
        async with self.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(query)).mappings()]

    async def suspended_tenants(self) -> set[str]:
        """Tenants the operator suspended: their flows stay parked, their queued flows wait."""
        async with self.engine.connect() as conn:
            return set((await conn.execute(select(TenantRow.name).where(TenantRow.state == "suspended"))).scalars())

    async def unpark(self, flow_id: str) -> bool:
        """A suspended flow queued again (its tenant was resumed); False if it is not suspended."""
        query = update(FlowRow).where(FlowRow.id == flow_id, FlowRow.status == "suspended").values(status="queued")
        async with self._writing() as conn:
            return (await conn.execute(query)).rowcount == 1
