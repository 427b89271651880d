"""Repository for learned patterns: one-transaction batch upserts and per-tenant loads."""
from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.leases import ShardLease
from storage.models import PatternRow

MUTABLE = ("confidence", "support", "accepted", "rejected", "updated_at")


class PatternStore:
    def __init__(self, engine: AsyncEngine, lease: ShardLease | None = None) -> None:
        """With a `lease`, every write commits only while this copy of the shard holds it."""
        self.engine = engine
        self.lease = lease
        self.dialect = engine.dialect.name

    async def write(self, rows: list[dict[str, Any]]) -> None:
        """Insert new patterns and update the evidence of known ones, all in one transaction."""
        if not rows:
            return
        module = postgresql if self.dialect == "postgresql" else sqlite
        statement = module.insert(PatternRow)
        statement = statement.on_conflict_do_update(
            index_elements=["id"], set_={c: statement.excluded[c] for c in MUTABLE}
        )
        async with self.engine.begin() as conn:
            if self.lease is not None:
                await self.lease.hold(conn)
            await conn.execute(statement, rows)

    async def load(self, tenant: str) -> list[dict[str, Any]]:
        """Every pattern of the tenant, oldest first (the index is rebuilt in this order)."""
        query = select(PatternRow).where(PatternRow.tenant == tenant).order_by(PatternRow.created_at, PatternRow.id)
        async with self.engine.connect() as conn:
            return [dict(row) for row in (await conn.execute(query)).mappings()]
