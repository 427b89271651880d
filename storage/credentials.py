"""Repository for credentials: signing keys, token revocations and the audit log."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.models import AuditRow, SigningKeyRow, TokenRevocationRow


def _utc(ts: datetime | None) -> datetime | None:
    return ts if ts is None or ts.tzinfo else ts.replace(tzinfo=timezone.utc)


def audit_row(actor: str, action: str, tenant: str | None, outcome: str, **detail: Any) -> dict[str, Any]:
    return {"ts": datetime.now(timezone.utc), "actor": actor, "action": action, "tenant": tenant,
            "outcome": outcome, "detail": detail}


class CredentialsStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    # -- signing keys -------------------------------------------------------------------------
    async def keys(self) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(SigningKeyRow).order_by(SigningKeyRow.signs_from))).mappings()
            return [{**row, "created_at": _utc(row["created_at"]), "signs_from": _utc(row["signs_from"]),
                     "retire_at": _utc(row["retire_at"])} for row in rows]

    async def add_key(self, kid: str, secret: str, now: datetime, signs_from: datetime,
                      retire_others_at: datetime | None) -> None:
        """A new key; with `retire_others_at`, every key not yet retired retires then (a rotation)."""
        async with self.engine.begin() as conn:
            if retire_others_at is not None:
                await conn.execute(update(SigningKeyRow).where(SigningKeyRow.retire_at.is_(None))
                                   .values(retire_at=retire_others_at))
            await conn.execute(insert(SigningKeyRow).values(kid=kid, secret=secret, created_at=now,
                                                            signs_from=signs_from, retire_at=None))

    async def drop_retired_keys(self, before: datetime) -> int:
        async with self.engine.begin() as conn:
            result = await conn.execute(delete(SigningKeyRow).where(SigningKeyRow.retire_at < before))
            return result.rowcount or 0

    # -- revocations ----------------------------------------------------------------------------
    async def add_revocation(self, tenant: str, jti: str | None, issued_before: datetime | None, now: datetime,
                             expires_at: datetime) -> int:
        async with self.engine.begin() as conn:
            result = await conn.execute(insert(TokenRevocationRow).values(
                tenant=tenant, jti=jti, issued_before=issued_before, created_at=now, expires_at=expires_at))
            return int(result.inserted_primary_key[0])

    async def revocations(self, now: datetime, tenant: str | None = None) -> list[dict[str, Any]]:
        """Revocations still in force (some token they concern may not have expired yet)."""
        query = select(TokenRevocationRow).where(TokenRevocationRow.expires_at > now)
        if tenant is not None:
            query = query.where(TokenRevocationRow.tenant == tenant)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query.order_by(TokenRevocationRow.id))).mappings()
            return [{**row, "issued_before": _utc(row["issued_before"]), "created_at": _utc(row["created_at"]),
                     "expires_at": _utc(row["expires_at"])} for row in rows]

    # -- audit ----------------------------------------------------------------------------------
    async def audit(self, rows: list[dict[str, Any]]) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(insert(AuditRow), rows)

    async def audit_page(self, after: int, limit: int, tenant: str | None = None) -> list[dict[str, Any]]:
        query = select(AuditRow).where(AuditRow.id > after)
        if tenant is not None:
            query = query.where(AuditRow.tenant == tenant)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query.order_by(AuditRow.id).limit(limit))).mappings()
            return [{**row, "ts": _utc(row["ts"]).isoformat()} for row in rows]
