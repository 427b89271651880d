"""Repository for the operator's per-tenant limit overrides (actors/substrate/limits.py holds their meaning)."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.models import TenantLimitsRow


class LimitsStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name

    async def get(self, tenant: str) -> dict[str, Any] | None:
        """The tenant's overrides, or None when the operator set none."""
        return (await self.get_many([tenant])).get(tenant)

    async def get_many(self, tenants: list[str]) -> dict[str, dict[str, Any]]:
        """The overrides of those of `tenants` that have any, in one query (a shard re-reads the
        limits of every tenant it serves, so one query per tenant would be one per request)."""
        if not tenants:
            return {}
        query = select(TenantLimitsRow.tenant, TenantLimitsRow.limits).where(TenantLimitsRow.tenant.in_(tenants))
        async with self.engine.connect() as conn:
            return {tenant: limits for tenant, limits in (await conn.execute(query)).all()}

    async def put(self, tenant: str, overrides: dict[str, Any]) -> None:
        """Replace the tenant's overrides (an empty object: back to the defaults)."""
        if not overrides:
            async with self.engine.begin() as conn:
                await conn.execute(delete(TenantLimitsRow).where(TenantLimitsRow.tenant == tenant))
            return
        module = postgresql if self.dialect == "postgresql" else sqlite
        now = datetime.now(timezone.utc)
        statement = module.insert(TenantLimitsRow).values(tenant=tenant, limits=overrides, updated_at=now)
        statement = statement.on_conflict_do_update(index_elements=["tenant"],
                                                    set_={"limits": overrides, "updated_at": now})
        async with self.engine.begin() as conn:
            await conn.execute(statement)
