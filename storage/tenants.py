"""Repository for tenants as records, and for everything a tenant owns taken as a whole: the
figures an operator looks at, the purge that deletes a tenant, and export and import as JSON lines.

`OWNED` lists every table holding a tenant's data. The audit log and token revocations are not in
it: they are the operator's record of what was done to the tenant, and a deleted tenant's old
tokens stay refused through a revocation until they have all expired.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, AsyncIterator, Callable, Iterable

from sqlalchemy import JSON, Boolean, DateTime, Float, Integer, String, delete, func, insert, select, tuple_, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from storage import strict_json
from storage.models import (BudgetLevelRow, BudgetRow, EventRow, FlowRow, MessageRow, PatternRow, PriceOverrideRow,
                            ReservationRow, SubscriptionRow, TenantLimitsRow, TenantRow, UsageRow)

OWNED = {model.__tablename__: model for model in (
    EventRow, UsageRow, BudgetRow, ReservationRow, BudgetLevelRow, PriceOverrideRow, PatternRow, MessageRow,
    SubscriptionRow, FlowRow, TenantLimitsRow)}
GENERATED = {"llm_usage": {"id"}}  # assigned by the database on import: ids of other tenants may hold them
EXPORT_FORMAT = "raytenant-export/1"
IMPORT_BATCH = 500


class ImportError_(ValueError):
    """An export that cannot be imported (the line and why); nothing was written."""


def _utc(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


def record(row: Any) -> dict[str, Any]:
    return {"tenant": row["name"], "state": row["state"], "created_at": _utc(row["created_at"]).isoformat(),
            "updated_at": _utc(row["updated_at"]).isoformat()}


def _month_start(now: datetime) -> datetime:
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


class TenantStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    # -- records --------------------------------------------------------------------------------
    async def create(self, name: str, *, state: str = "active", now: datetime | None = None) -> dict[str, Any] | None:
        """The new record, or None if the tenant exists."""
        now = now or datetime.now(timezone.utc)
        values = {"name": name, "state": state, "created_at": now, "updated_at": now}
        try:
            async with self.engine.begin() as conn:
                await conn.execute(insert(TenantRow).values(**values))
        except IntegrityError:
            return None
        return record(values)

    async def get(self, name: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(TenantRow).where(TenantRow.name == name))).mappings().first()
        return record(row) if row else None

    async def ensure(self, name: str) -> dict[str, Any]:
        """The tenant's record, created if it has none (a token minted for a new tenant)."""
        return await self.get(name) or await self.create(name) or await self.get(name) or {}

    async def page(self, after: str, limit: int) -> list[dict[str, Any]]:
        query = select(TenantRow).where(TenantRow.name > after).order_by(TenantRow.name).limit(limit)
        async with self.engine.connect() as conn:
            return [record(row) for row in (await conn.execute(query)).mappings()]

    async def set_state(self, name: str, state: str) -> bool:
        """Whether the tenant exists (its state is `state` now)."""
        query = update(TenantRow).where(TenantRow.name == name).values(state=state, updated_at=datetime.now(timezone.utc))
        async with self.engine.begin() as conn:
            return (await conn.execute(query)).rowcount == 1

    async def suspended(self) -> list[str]:
        async with self.engine.connect() as conn:
            return list((await conn.execute(select(TenantRow.name).where(TenantRow.state == "suspended"))).scalars())

    # -- figures --------------------------------------------------------------------------------
    async def figures(self, names: list[str], now: datetime | None = None) -> dict[str, dict[str, Any]]:
        """Month-to-date spend, patterns, queued messages and flows by state, per tenant."""
        now = now or datetime.now(timezone.utc)
        found = {n: {"month_spend_usd": 0.0, "patterns": 0, "queued_messages": 0, "running_flows": 0,
                     "queued_flows": 0, "suspended_flows": 0, "last_seq": 0} for n in names}
        if not names:
            return found
        queries = {
            "spend": select(UsageRow.tenant, func.sum(UsageRow.cost_nanos)).where(
                UsageRow.tenant.in_(names), UsageRow.ts >= _month_start(now)).group_by(UsageRow.tenant),
            "patterns": select(PatternRow.tenant, func.count()).where(PatternRow.tenant.in_(names))
            .group_by(PatternRow.tenant),
            "messages": select(MessageRow.tenant, func.count()).where(
                MessageRow.tenant.in_(names), MessageRow.state.in_(("ready", "inflight"))).group_by(MessageRow.tenant),
            "flows": select(FlowRow.tenant, FlowRow.status, func.count()).where(
                FlowRow.tenant.in_(names), FlowRow.status.in_(("initialized", "running", "queued", "suspended")))
            .group_by(FlowRow.tenant, FlowRow.status),
            "events": select(EventRow.tenant, func.max(EventRow.seq)).where(EventRow.tenant.in_(names))
            .group_by(EventRow.tenant),
        }
        async with self.engine.connect() as conn:
            for tenant, nanos in await conn.execute(queries["spend"]):
                found[tenant]["month_spend_usd"] = int(nanos or 0) / 1e9
            for tenant, count in await conn.execute(queries["patterns"]):
                found[tenant]["patterns"] = count
            for tenant, count in await conn.execute(queries["messages"]):
                found[tenant]["queued_messages"] = count
            for tenant, status, count in await conn.execute(queries["flows"]):
                key = {"queued": "queued_flows", "suspended": "suspended_flows"}.get(status, "running_flows")
                found[tenant][key] += count
            for tenant, seq in await conn.execute(queries["events"]):
                found[tenant]["last_seq"] = int(seq or 0)
        return found

    async def counts(self, name: str) -> dict[str, int]:
        """The tenant's rows in every table it owns data in."""
        async with self.engine.connect() as conn:
            return {table: (await conn.execute(select(func.count()).select_from(model).where(model.tenant == name))).scalar_one()
                    for table, model in OWNED.items()}

    # -- delete ---------------------------------------------------------------------------------
    async def purge(self, name: str) -> dict[str, int]:
        """Delete everything the tenant owns, and its record, in one transaction: rows deleted per table."""
        deleted: dict[str, int] = {}
        async with self.engine.begin() as conn:
            for table, model in OWNED.items():
                deleted[table] = (await conn.execute(delete(model).where(model.tenant == name))).rowcount or 0
            await conn.execute(delete(TenantRow).where(TenantRow.name == name))
        return deleted

    # -- export and import ------------------------------------------------------------------------
    async def export(self, name: str) -> AsyncIterator[str]:
        """The tenant as JSON lines: a header with its record, then one line per row of every table
        it owns, in key order, read in pages so a large tenant streams in bounded memory."""
        found = await self.get(name)
        if found is None:
            return
        yield strict_json.dumps({"format": EXPORT_FORMAT, **found}) + "\n"
        for table, model in OWNED.items():
            keys = list(model.__table__.primary_key.columns)
            skip = GENERATED.get(table, set())
            last: tuple | None = None
            while True:
                query = select(model.__table__).where(model.tenant == name)
                if last is not None:
                    query = query.where(tuple_(*keys) > tuple_(*last))
                async with self.engine.connect() as conn:
                    rows = list((await conn.execute(query.order_by(*keys).limit(IMPORT_BATCH))).mappings())
                for row in rows:
                    values = {k: _to_json(v) for k, v in row.items() if k not in skip}
                    yield strict_json.dumps({"table": table, "row": values}) + "\n"
                if len(rows) < IMPORT_BATCH:
                    break
                last = tuple(rows[-1][k.name] for k in keys)

    async def import_lines(self, lines: Iterable[str | bytes], valid_name: Callable[[Any], bool]) -> dict[str, Any]:
        """Import an export into a database where the tenant does not exist, in one transaction:
        all of it or, on any bad line (ImportError_) or a row the database refuses, nothing."""
        lines = iter(lines)
        header = _parse(next(lines, b""), 1)
        if header.get("format") != EXPORT_FORMAT:
            raise ImportError_(f"line 1 must be the export's header ({EXPORT_FORMAT})")
        if not valid_name(header.get("tenant")):
            raise ImportError_("line 1: tenant must be 1-128 characters of letters, digits and . _ : -")
        name = header["tenant"]
        if header.get("state") not in ("active", "suspended"):
            raise ImportError_("line 1: state must be active or suspended")
        rows: dict[str, list[dict[str, Any]]] = {}
        for number, line in enumerate(lines, start=2):
            if not line.strip():
                continue
            item = _parse(line, number)
            table, row = item.get("table"), item.get("row")
            model = OWNED.get(table) if isinstance(table, str) else None
            if model is None or not isinstance(row, dict) or set(item) != {"table", "row"}:
                raise ImportError_(f"line {number}: expected {{\"table\": one of {sorted(OWNED)}, \"row\": {{...}}}}")
            if row.get("tenant") != name:
                raise ImportError_(f"line {number}: the row belongs to another tenant than the header's")
            rows.setdefault(table, []).append(_from_json(model, row, number, GENERATED.get(table, set())))
        created = _parse_time(header.get("created_at"), 1)
        try:
            async with self.engine.begin() as conn:
                if (await conn.execute(select(TenantRow.name).where(TenantRow.name == name))).first() is not None:
                    raise FileExistsError(name)
                await conn.execute(insert(TenantRow).values(name=name, state=header["state"], created_at=created,
                                                            updated_at=datetime.now(timezone.utc)))
                for table, batch in rows.items():
                    for start in range(0, len(batch), IMPORT_BATCH):
                        await conn.execute(insert(OWNED[table]), batch[start:start + IMPORT_BATCH])
        except IntegrityError as error:
            raise ImportError_(f"the database refused a row (it may already hold it): {error.orig}") from error
        except DBAPIError as error:
            if error.connection_invalidated:
                raise
            raise ImportError_(f"the database refused a row: {error.orig}") from error
        return {"tenant": name, "state": header["state"], "rows": {t: len(b) for t, b in rows.items()}}


def _to_json(value: Any) -> Any:
    return _utc(value).isoformat() if isinstance(value, datetime) else value


def _parse(line: str | bytes, number: int) -> dict[str, Any]:
    try:
        item = strict_json.loads(line)
    except strict_json.StrictJSONError as error:
        raise ImportError_(f"line {number} is not strict JSON: {error.message}") from error
    if not isinstance(item, dict):
        raise ImportError_(f"line {number} must be a JSON object")
    return item


def _parse_time(value: Any, number: int) -> datetime:
    try:
        return _utc(datetime.fromisoformat(value))
    except (TypeError, ValueError) as error:
        raise ImportError_(f"line {number}: {value!r} is not an ISO-8601 time") from error


def _fits(kind: Any, value: Any) -> bool:
    """Whether a JSON value has the column's type (SQLite would store anything anywhere)."""
    if isinstance(kind, JSON):
        return True
    if isinstance(kind, Boolean):
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if isinstance(kind, Integer):
        return isinstance(value, int) and -2**63 <= value < 2**63
    if isinstance(kind, Float):
        return isinstance(value, (int, float))
    if isinstance(kind, String):
        return isinstance(value, str) and (kind.length is None or len(value) <= kind.length)
    return False


def _from_json(model: Any, row: dict[str, Any], number: int, skip: set[str]) -> dict[str, Any]:
    columns = model.__table__.columns
    unknown = set(row) - {c.name for c in columns}
    if unknown:
        raise ImportError_(f"line {number}: {model.__tablename__} has no column {sorted(unknown)[0]!r}")
    values = {}
    for name, value in row.items():
        if name in skip:
            continue
        column = columns[name]
        if value is None:
            if not column.nullable:
                raise ImportError_(f"line {number}: {model.__tablename__}.{name} must not be null")
        elif isinstance(column.type, DateTime):
            value = _parse_time(value, number)
        elif not _fits(column.type, value):
            raise ImportError_(f"line {number}: {model.__tablename__}.{name} cannot hold {value!r:.80}")
        values[name] = value
    return values
