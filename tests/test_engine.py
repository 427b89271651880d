"""The engine's handling of connections PostgreSQL closed: a pooled connection whose session the
server ended (a restart, `pg_terminate_backend`) is replaced at checkout, so the first statement
after the database returns does not fail."""
from __future__ import annotations

import asyncio

import asyncpg
from sqlalchemy import text

from storage.engine import create_engine
from tests.conftest import PG_ADMIN_DSN


async def test_a_connection_the_server_closed_is_replaced(pg_url):
    engine = create_engine(pg_url)
    try:
        async with engine.connect() as conn:
            first = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        admin = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", first)
        finally:
            await admin.close()
        await asyncio.sleep(0.2)  # asyncpg sees the close
        async with engine.connect() as conn:  # the pool's only idle connection is the dead one
            second = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        assert second != first
    finally:
        await engine.dispose()


async def test_a_float_jsonb_wrote_as_a_huge_integer_reads_back_as_a_float(pg_url):
    """jsonb turns 1e19 into 10000000000000000000, which strict JSON (an export, a frame) refuses:
    schemathesis found a tenant export that broke mid-stream on one."""
    from sqlalchemy import cast, literal, select
    from sqlalchemy.dialects.postgresql import JSONB

    from storage import strict_json

    engine = create_engine(pg_url)
    try:
        async with engine.connect() as conn:
            value = (await conn.execute(select(cast(literal('{"big": 1e19, "small": 7}'), JSONB)))).scalar_one()
        assert value == {"big": 1e19, "small": 7}
        assert isinstance(value["big"], float) and isinstance(value["small"], int)
        strict_json.dumps(value)
    finally:
        await engine.dispose()


async def test_batch_writes_are_planned_for_their_arrays_not_from_a_cached_generic_plan(pg_url, tenant):
    """A generic plan cached while a table was small joined a batch's rows by scanning the whole
    table: the mailbox's state updates then cost O(table) each, and its store wrote 8,700
    messages/s instead of 17,000 (probe of 2026-12-07). Every statement is planned for its
    parameters instead."""
    import uuid
    from datetime import datetime, timezone

    from storage.engine import PoolLimits
    from storage.mailbox import MailboxStore, MailboxWrites

    engine = create_engine(pg_url, limits=PoolLimits(size=1, overflow=0))
    try:
        store, now = MailboxStore(engine), datetime.now(timezone.utc)
        for _ in range(8):
            ids = [uuid.uuid4().hex for _ in range(20)]
            await store.write(MailboxWrites(messages={i: {
                "id": i, "tenant": tenant, "receiver": "a", "sender": "b", "type": "notification", "content": {},
                "correlation_id": None, "topic": None, "state": "ready", "attempts": 0, "visible_at": now,
                "created_at": now, "updated_at": now} for i in ids}))
            await store.write(MailboxWrites(states={i: {"id": i, "state": "inflight", "attempts": 1, "visible_at": now,
                                                        "updated_at": now} for i in ids}))
        async with engine.connect() as conn:
            assert (await conn.execute(text("SHOW plan_cache_mode"))).scalar_one() == "force_custom_plan"
            plans = (await conn.execute(text(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement LIKE 'WITH m AS (INSERT INTO agent_messages%'"
            ))).all()
        assert plans and all(generic == 0 and custom >= 8 for generic, custom in plans)
    finally:
        await engine.dispose()
