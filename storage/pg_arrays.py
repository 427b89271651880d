"""One-statement batch writes on PostgreSQL: rows travel as one array per column through unnest.

A group commit's rows become a handful of array parameters, so the whole batch is one prepared
statement, one round trip, whatever its size: profiling the ledger, the hub and the mailbox showed
executemany's per-row parameter handling and the BEGIN/COMMIT round trips as their commits' cost.
Columns are given as {name: SQL type}; JSONB travels as text (asyncpg has no jsonb[] codec) and is
cast per row. `JSONB` stores None as SQL NULL (a nullable column); `JSONB_VALUE` stores it as the
JSON value null, as SQLAlchemy's JSON type does, for a NOT NULL column whose value may be null.
"""
from __future__ import annotations

from typing import Any, Callable

from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.leases import PG_LEASE_CTE, PG_LEASE_HELD, ShardLease
from storage.strict_json import dumps_stored

Statements = tuple[TextClause, TextClause]  # the batch's statement without and with a lease


JSON_KINDS = ("JSONB", "JSONB_VALUE")


def _array(prefix: str, column: str, kind: str) -> str:
    return f"CAST(:{prefix}_{column} AS {'TEXT' if kind in JSON_KINDS else kind}[])"


def unnest_insert(table: str, prefix: str, columns: dict[str, str], conflict: tuple[str, ...] = (),
                  where: str = "") -> str:
    """INSERT of the rows in arrays `:<prefix>_<column>`; on a `conflict`, the other columns are updated."""
    names = ", ".join(columns)
    sources = ", ".join(_array(prefix, c, t) for c, t in columns.items())
    values = ", ".join(f"CAST({c} AS JSONB)" if t in JSON_KINDS else c for c, t in columns.items())
    sql = f"INSERT INTO {table} ({names}) SELECT {values} FROM unnest({sources}) AS batch({names})"
    if where:
        sql += f" WHERE {where}"
    if conflict:
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns if c not in conflict)
        sql += f" ON CONFLICT ({', '.join(conflict)}) DO UPDATE SET {updates}"
    return sql


def unnest_update(table: str, prefix: str, key: str, columns: dict[str, str], where: str = "") -> str:
    """UPDATE of the rows whose `key` is in the arrays, setting the other columns to theirs."""
    names = ", ".join(columns)
    sources = ", ".join(_array(prefix, c, t) for c, t in columns.items())
    sets = ", ".join(f"{c} = CAST(batch.{c} AS JSONB)" if t in JSON_KINDS else f"{c} = batch.{c}"
                     for c, t in columns.items() if c != key)
    sql = f"UPDATE {table} SET {sets} FROM unnest({sources}) AS batch({names}) WHERE {table}.{key} = batch.{key}"
    return sql + (f" AND {where}" if where else "")


def arrays(prefix: str, columns: dict[str, str], rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """The rows as the statement's array parameters."""
    return {f"{prefix}_{c}": [_value(row[c], t) for row in rows] for c, t in columns.items()}


def _value(value: Any, kind: str) -> Any:
    if kind == "JSONB_VALUE" or (kind == "JSONB" and value is not None):
        return dumps_stored(value)
    return value


def batch_statements(parts: Callable[[str], dict[str, str]]) -> Statements:
    """One statement of data-modifying CTEs, `parts(where)` -> {name: statement}: as it is, and
    writing only while this copy of the shard holds its lease (storage/leases.py), answering
    whether it did."""
    def build(leased: bool) -> TextClause:
        ctes = ", ".join(f"{name} AS ({sql})" for name, sql in parts(PG_LEASE_HELD if leased else "").items())
        return text(f"WITH {PG_LEASE_CTE + ', ' if leased else ''}{ctes} "
                    + ("SELECT count(*) FROM lease" if leased else "SELECT 1"))
    return build(False), build(True)


async def run_batch(engine: AsyncEngine, lease: ShardLease | None, statements: Statements,
                    params: dict[str, Any]) -> None:
    """The batch in one round trip, atomic in autocommit; a copy of the shard that lost its lease
    is fenced (nothing was written)."""
    statement = statements[0]
    if lease is not None:
        statement, params = statements[1], {**params, **lease.params()}
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        held = (await conn.execute(statement, params)).scalar_one()
    if not held and lease is not None:
        lease.lost()
