"""Repository for the cost ledger: tenant state loads, one-transaction batch writes, SQL summaries."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable

from sqlalchemy import and_, delete, func, insert, select, text, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.leases import ShardLease
from storage.models import BudgetLevelRow, BudgetRow, PriceOverrideRow, ReservationRow, UsageRow
from storage.pg_arrays import arrays, batch_statements, run_batch, unnest_insert


def utc(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


@dataclass
class LedgerWrites:
    """Everything one group commit writes. Budgets and reservations are the rows' final states."""

    usage: list[dict[str, Any]] = field(default_factory=list)
    budgets: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    reservations: dict[str, dict[str, Any]] = field(default_factory=dict)
    overrides: dict[tuple[str, str], dict[str, Any] | None] = field(default_factory=dict)  # None deletes
    levels: dict[tuple[str, str, str], dict[str, Any] | None] = field(default_factory=dict)  # None deletes

    def merge(self, other: "LedgerWrites") -> None:
        self.usage += other.usage
        self.budgets.update(other.budgets)
        self.reservations.update(other.reservations)
        self.overrides.update(other.overrides)
        self.levels.update(other.levels)


USAGE_COLUMNS = {
    "tenant": "VARCHAR", "model": "VARCHAR", "input_tokens": "BIGINT", "output_tokens": "BIGINT",
    "cached_tokens": "BIGINT", "cost_nanos": "BIGINT", "agent": "VARCHAR", "task": "VARCHAR", "flow_id": "VARCHAR",
    "idempotency_key": "VARCHAR", "reservation_id": "VARCHAR", "ts": "TIMESTAMPTZ", "overrun_nanos": "BIGINT",
    "late": "BOOLEAN", "user_id": "VARCHAR", "engagement": "VARCHAR", "request_hash": "VARCHAR", "reply": "JSONB",
}
BUDGET_COLUMNS = {
    "tenant": "VARCHAR", "month": "VARCHAR", "amount_nanos": "BIGINT", "alert_threshold": "FLOAT8",
    "used_nanos": "BIGINT", "reserved_nanos": "BIGINT", "alert_sent": "BOOLEAN", "cap_nanos": "BIGINT",
    "overrun_nanos": "BIGINT",
}
RESERVATION_COLUMNS = {
    "id": "VARCHAR", "tenant": "VARCHAR", "month": "VARCHAR", "model": "VARCHAR", "amount_nanos": "BIGINT",
    "state": "VARCHAR", "expires_at": "TIMESTAMPTZ", "created_at": "TIMESTAMPTZ", "input_tokens": "BIGINT",
    "max_output_tokens": "BIGINT", "engagement": "VARCHAR", "user_id": "VARCHAR", "agent": "VARCHAR",
}


# On PostgreSQL a whole group commit is one statement over arrays (data-modifying CTEs): one round
# trip, atomic in autocommit, one prepared statement whatever the batch size. Profiling showed the
# per-row parameter handling of executemany and the BEGIN/COMMIT round trips as the commit's cost.
_PG_WRITE = batch_statements(lambda where: {
    "u": unnest_insert("llm_usage", "u", USAGE_COLUMNS, where=where),
    "b": unnest_insert("llm_budgets", "b", BUDGET_COLUMNS, ("tenant", "month"), where),
    "r": unnest_insert("llm_reservations", "r", RESERVATION_COLUMNS, ("id",), where),
})
_PG_KEYS = text(
    f"SELECT {', '.join('u.' + c for c in USAGE_COLUMNS)} FROM llm_usage AS u "
    "JOIN unnest(CAST(:tenants AS VARCHAR[]), CAST(:keys AS VARCHAR[])) AS k(tenant, key) "
    "ON u.tenant = k.tenant AND u.idempotency_key = k.key"
)


class LedgerStore:
    def __init__(self, engine: AsyncEngine, lease: ShardLease | None = None) -> None:
        """With a `lease`, every write commits only while this copy of the shard holds it."""
        self.engine = engine
        self.lease = lease
        self.dialect = engine.dialect.name

    def _upsert(self, table, rows: list[dict[str, Any]], keys: list[str]):
        module = postgresql if self.dialect == "postgresql" else sqlite
        statement = module.insert(table)
        updates = {c: statement.excluded[c] for c in rows[0] if c not in keys}
        return statement.on_conflict_do_update(index_elements=keys, set_=updates)

    async def write(self, writes: LedgerWrites) -> None:
        """One transaction for the whole batch: all of it is stored, or none."""
        if self.dialect == "postgresql" and not writes.overrides and not writes.levels:
            params = {
                **arrays("u", USAGE_COLUMNS, writes.usage),
                **arrays("b", BUDGET_COLUMNS, list(writes.budgets.values())),
                **arrays("r", RESERVATION_COLUMNS, list(writes.reservations.values())),
            }
            await run_batch(self.engine, self.lease, _PG_WRITE, params)
            return
        async with self.engine.begin() as conn:
            if self.lease is not None:
                await self.lease.hold(conn)
            if writes.usage:
                await conn.execute(insert(UsageRow.__table__), writes.usage)
            if writes.budgets:
                rows = list(writes.budgets.values())
                await conn.execute(self._upsert(BudgetRow.__table__, rows, ["tenant", "month"]), rows)
            if writes.reservations:
                rows = list(writes.reservations.values())
                await conn.execute(self._upsert(ReservationRow.__table__, rows, ["id"]), rows)
            upserts = [row for row in writes.overrides.values() if row is not None]
            if upserts:
                await conn.execute(self._upsert(PriceOverrideRow.__table__, upserts, ["tenant", "model"]), upserts)
            for (tenant, model), row in writes.overrides.items():
                if row is None:
                    await conn.execute(
                        delete(PriceOverrideRow).where(PriceOverrideRow.tenant == tenant, PriceOverrideRow.model == model)
                    )
            levels = [row for row in writes.levels.values() if row is not None]
            if levels:
                await conn.execute(self._upsert(BudgetLevelRow.__table__, levels, ["tenant", "scope", "key"]), levels)
            for (tenant, scope, key), row in writes.levels.items():
                if row is None:
                    await conn.execute(delete(BudgetLevelRow).where(
                        BudgetLevelRow.tenant == tenant, BudgetLevelRow.scope == scope, BudgetLevelRow.key == key))

    async def load(self, tenants: list[str]) -> dict[str, dict[str, Any]]:
        """Per tenant: its latest budget row, open reservations, price overrides and budget levels."""
        found: dict[str, dict[str, Any]] = {t: {"budget": None, "reservations": [], "overrides": [], "levels": []}
                                            for t in tenants}
        latest = (
            select(BudgetRow.tenant, func.max(BudgetRow.month).label("month"))
            .where(BudgetRow.tenant.in_(tenants))
            .group_by(BudgetRow.tenant)
            .subquery()
        )
        async with self.engine.connect() as conn:
            budgets = await conn.execute(
                select(BudgetRow).join(latest, and_(BudgetRow.tenant == latest.c.tenant, BudgetRow.month == latest.c.month))
            )
            for row in budgets.mappings():
                found[row["tenant"]]["budget"] = dict(row)
            open_ = await conn.execute(
                select(ReservationRow).where(ReservationRow.tenant.in_(tenants), ReservationRow.state == "open")
            )
            for row in open_.mappings():
                found[row["tenant"]]["reservations"].append(dict(row))
            overrides = await conn.execute(select(PriceOverrideRow).where(PriceOverrideRow.tenant.in_(tenants)))
            for row in overrides.mappings():
                found[row["tenant"]]["overrides"].append(dict(row))
            levels = await conn.execute(select(BudgetLevelRow).where(BudgetLevelRow.tenant.in_(tenants)))
            for row in levels.mappings():
                found[row["tenant"]]["levels"].append(dict(row))
        return found

    async def level_spend(self, tenant: str, wanted: list[tuple[str | None, str, datetime]],
                          until: datetime | None = None) -> list[tuple[int, int]]:
        """(cost, overrun) in nanos of the tenant's usage since each start (and before `until`),
        whose `column` equals the key (column None: all of it). One query per column and start."""
        groups: dict[tuple[str | None, datetime], set[str]] = {}
        for column, key, start in wanted:
            groups.setdefault((column, start), set()).add(key)
        sums: dict[tuple[str | None, datetime, str], tuple[int, int]] = {}
        measures = (func.coalesce(func.sum(UsageRow.cost_nanos), 0), func.coalesce(func.sum(UsageRow.overrun_nanos), 0))
        async with self.engine.connect() as conn:
            for (column, start), keys in groups.items():
                where = [UsageRow.tenant == tenant, UsageRow.ts >= start]
                if until is not None:
                    where.append(UsageRow.ts < until)
                if column is None:
                    cost, overrun = (await conn.execute(select(*measures).where(*where))).one()
                    for key in keys:
                        sums[(None, start, key)] = (int(cost), int(overrun))
                    continue
                tag = getattr(UsageRow, column)
                query = select(tag, *measures).where(*where, tag.in_(sorted(keys))).group_by(tag)
                for key, cost, overrun in await conn.execute(query):
                    sums[(column, start, key)] = (int(cost), int(overrun))
        return [sums.get((column, start, key), (0, 0)) for column, key, start in wanted]

    async def reservation(self, tenant: str, reservation_id: str) -> dict[str, Any] | None:
        """A reservation no longer in memory (closed before this activation), for a late settle."""
        query = select(ReservationRow).where(ReservationRow.tenant == tenant, ReservationRow.id == reservation_id)
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        return dict(row) if row else None

    async def month_spend(self, tenants: list[str], start: datetime) -> dict[str, tuple[int, int]]:
        """(cost, overrun) in nanos of each tenant's usage since `start`: a month without a budget
        row yet (spend recorded before any budget, or before this version kept rows for it)."""
        if not tenants:
            return {}
        query = (select(UsageRow.tenant, func.coalesce(func.sum(UsageRow.cost_nanos), 0),
                        func.coalesce(func.sum(UsageRow.overrun_nanos), 0))
                 .where(UsageRow.tenant.in_(tenants), UsageRow.ts >= start).group_by(UsageRow.tenant))
        async with self.engine.connect() as conn:
            return {t: (int(cost), int(overrun)) for t, cost, overrun in await conn.execute(query)}

    async def usage_by_keys(self, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
        """Stored records by (tenant, idempotency key): many callers' lookups in one query."""
        pairs = list(pairs)
        found: dict[tuple[str, str], dict[str, Any]] = {}
        if self.dialect == "postgresql":
            params = {"tenants": [t for t, _ in pairs], "keys": [k for _, k in pairs]}
            async with self.engine.connect() as conn:
                for row in (await conn.execute(_PG_KEYS, params)).mappings():
                    found[(row["tenant"], row["idempotency_key"])] = dict(row)
            return found
        async with self.engine.connect() as conn:
            for start in range(0, len(pairs), 5_000):  # bound the statement's parameter count
                chunk = pairs[start : start + 5_000]
                query = select(UsageRow).where(tuple_(UsageRow.tenant, UsageRow.idempotency_key).in_(chunk))
                for row in (await conn.execute(query)).mappings():
                    found[(row["tenant"], row["idempotency_key"])] = dict(row)
        return found

    def _day(self):
        if self.dialect == "postgresql":
            return func.to_char(func.timezone("UTC", UsageRow.ts), "YYYY-MM-DD")
        return func.strftime("%Y-%m-%d", UsageRow.ts)

    async def summary(self, tenant: str, start: datetime, end: datetime) -> dict[str, Any]:
        """Totals and breakdowns by model, agent, flow and UTC day, all aggregated by the database."""
        where = and_(UsageRow.tenant == tenant, UsageRow.ts >= start, UsageRow.ts < end)
        tokens = UsageRow.input_tokens + UsageRow.output_tokens
        measures = (
            func.coalesce(func.sum(UsageRow.cost_nanos), 0),
            func.coalesce(func.sum(tokens), 0),
            func.count(),
            func.coalesce(func.sum(UsageRow.input_tokens), 0),
            func.coalesce(func.sum(UsageRow.output_tokens), 0),
            func.coalesce(func.sum(UsageRow.cached_tokens), 0),
            func.coalesce(func.sum(UsageRow.overrun_nanos), 0),
            func.count().filter(UsageRow.overrun_nanos > 0),
            func.count().filter(UsageRow.late),
        )
        groups = {
            "by_model": UsageRow.model,
            "by_agent": func.coalesce(UsageRow.agent, "unknown"),
            "by_flow": func.coalesce(UsageRow.flow_id, "none"),
            "by_engagement": func.coalesce(UsageRow.engagement, "none"),
            "by_user": func.coalesce(UsageRow.user_id, "unknown"),
            "by_day": self._day(),
        }
        out: dict[str, Any] = {}
        async with self.engine.connect() as conn:
            total = (await conn.execute(select(*measures).where(where))).one()
            out["total"] = _measures(total)
            for name, key in groups.items():
                rows = await conn.execute(select(key.label("key"), *measures).where(where).group_by(key).order_by(key))
                out[name] = {str(row[0]): _measures(row[1:]) for row in rows}
        return out


def _measures(row: Any) -> dict[str, int]:
    cost, tokens, requests, inp, outp, cached, overrun, overruns, late = (int(v or 0) for v in row)
    return {
        "overrun_nanos": overrun,
        "overrun_records": overruns,
        "late_records": late,
        "cost_nanos": cost,
        "tokens": tokens,
        "requests": requests,
        "input_tokens": inp,
        "output_tokens": outp,
        "cached_tokens": cached,
    }
