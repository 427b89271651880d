"""Repository for agent mailboxes: one-transaction batch writes, per-tenant loads.

A message's row is written whole once, when it is sent; handing it out, acknowledging it and
expiring it change only its delivery state (`MUTABLE`), so those writes carry four columns, not
its content again. On PostgreSQL a group commit without subscription changes is one statement.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.leases import ShardLease
from storage.models import MessageRow, SubscriptionRow
from storage.pg_arrays import arrays, batch_statements, run_batch, unnest_insert, unnest_update

ROW_COLUMNS = {
    "id": "VARCHAR", "tenant": "VARCHAR", "receiver": "VARCHAR", "sender": "VARCHAR", "type": "VARCHAR",
    "content": "JSONB_VALUE", "correlation_id": "VARCHAR", "topic": "VARCHAR", "state": "VARCHAR", "attempts": "INTEGER",
    "visible_at": "TIMESTAMPTZ", "created_at": "TIMESTAMPTZ", "updated_at": "TIMESTAMPTZ",
}
STATE_COLUMNS = {"id": "VARCHAR", "state": "VARCHAR", "attempts": "INTEGER", "visible_at": "TIMESTAMPTZ",
                 "updated_at": "TIMESTAMPTZ"}
MUTABLE = tuple(c for c in STATE_COLUMNS if c != "id")  # what a delivery changes


@dataclass
class MailboxWrites:
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> new row (latest state)
    states: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> {id, *MUTABLE} of a stored row
    topics: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # (tenant, agent) -> all topics

    def rows(self) -> list[Hashable]:
        """What these writes change: messages by id, and (tenant, agent) subscription lists."""
        return [*self.messages, *self.states, *(("topics", *key) for key in self.topics)]

    def merge(self, other: "MailboxWrites") -> None:
        """`other` came later: its rows and states win; a state change of a row new in this batch
        goes into that row."""
        for message_id, row in other.messages.items():
            self.states.pop(message_id, None)
            self.messages[message_id] = row
        for message_id, change in other.states.items():
            if message_id in self.messages:
                self.messages[message_id] = {**self.messages[message_id], **change}
            else:
                self.states[message_id] = change
        self.topics.update(other.topics)


_PG_WRITE = batch_statements(lambda where: {
    "m": unnest_insert("agent_messages", "m", ROW_COLUMNS, ("id",), where),
    "s": unnest_update("agent_messages", "s", "id", STATE_COLUMNS, where),
})
_STATE_UPDATE = (update(MessageRow).where(MessageRow.id == bindparam("b_id"))
                 .values({c: bindparam("b_" + c) for c in MUTABLE}))


class MailboxStore:
    def __init__(self, engine: AsyncEngine, lease: ShardLease | None = None) -> None:
        """With a `lease`, every write commits only while this copy of the shard holds it."""
        self.engine = engine
        self.lease = lease
        self.dialect = engine.dialect.name

    async def write(self, writes: MailboxWrites) -> None:
        """New messages, state changes and subscription lists, all in one transaction."""
        if self.dialect == "postgresql" and not writes.topics:
            params = {**arrays("m", ROW_COLUMNS, list(writes.messages.values())),
                      **arrays("s", STATE_COLUMNS, list(writes.states.values()))}
            await run_batch(self.engine, self.lease, _PG_WRITE, params)
            return
        async with self.engine.begin() as conn:
            if self.lease is not None:
                await self.lease.hold(conn)
            if writes.messages:
                module = postgresql if self.dialect == "postgresql" else sqlite
                statement = module.insert(MessageRow)
                statement = statement.on_conflict_do_update(
                    index_elements=["id"], set_={c: statement.excluded[c] for c in MUTABLE}
                )
                await conn.execute(statement, list(writes.messages.values()))
            if writes.states:
                await conn.execute(_STATE_UPDATE, [{"b_" + c: v for c, v in change.items()}
                                                   for change in writes.states.values()])
            for (tenant, agent), topics in writes.topics.items():
                await conn.execute(
                    delete(SubscriptionRow).where(SubscriptionRow.tenant == tenant, SubscriptionRow.agent == agent)
                )
                if topics:
                    await conn.execute(
                        insert(SubscriptionRow), [{"tenant": tenant, "agent": agent, "topic": t} for t in topics]
                    )

    async def load(self, tenant: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The tenant's undelivered messages (ready or inflight, oldest first) and subscriptions."""
        pending = (
            select(MessageRow)
            .where(MessageRow.tenant == tenant, MessageRow.state.in_(("ready", "inflight")))
            .order_by(MessageRow.created_at, MessageRow.id)
        )
        async with self.engine.connect() as conn:
            messages = [dict(r) for r in (await conn.execute(pending)).mappings()]
            subs = select(SubscriptionRow).where(SubscriptionRow.tenant == tenant)
            subscriptions = [dict(r) for r in (await conn.execute(subs)).mappings()]
        return messages, subscriptions

    async def get(self, tenant: str, message_id: str) -> dict[str, Any] | None:
        query = select(MessageRow).where(MessageRow.tenant == tenant, MessageRow.id == message_id)
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        return dict(row) if row else None

    async def states(self, tenant: str, message_ids: list[str]) -> dict[str, tuple[str, str]]:
        """(receiver, state) of many messages in one query; unknown ids are absent."""
        if not message_ids:
            return {}
        query = select(MessageRow.id, MessageRow.receiver, MessageRow.state).where(
            MessageRow.tenant == tenant, MessageRow.id.in_(message_ids))
        async with self.engine.connect() as conn:
            return {row.id: (row.receiver, row.state) for row in await conn.execute(query)}

    async def dead_letters(self, tenant: str, agent: str, limit: int) -> list[dict[str, Any]]:
        query = (
            select(MessageRow)
            .where(MessageRow.tenant == tenant, MessageRow.receiver == agent, MessageRow.state == "dead")
            .order_by(MessageRow.updated_at.desc())
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(query)).mappings()]
