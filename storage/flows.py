"""Repository for flows: a row per flow, updated as each phase finishes."""
from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.models import FlowRow

ACTIVE = ("initialized", "running")
SUMMARY_COLUMNS = [c for c in FlowRow.__table__.columns if c.name not in ("input", "results")]


class FlowStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create(self, row: dict[str, Any]) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(insert(FlowRow), [row])

    async def update(self, flow_id: str, **values: Any) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(update(FlowRow).where(FlowRow.id == flow_id).values(**values))

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

    async def active(self, runner: str) -> list[dict[str, Any]]:
        """Every flow of this runner kind that has not ended, oldest first: what runners resume."""
        query = (select(FlowRow).where(FlowRow.runner == runner, FlowRow.status.in_(ACTIVE))
                 .order_by(FlowRow.created_at, FlowRow.id))
        async with self.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(query)).mappings()]
