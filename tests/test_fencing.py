"""Fencing (storage/leases.py): two live copies of one shard against one database, as a partitioned
node that comes back leaves them. Only the copy that took the lease last commits; the event seqs
stay unique and gap-free, the budget is never exceeded and a message moves once.

The cores run without Ray (both databases); the last test runs two real shard actors of the same
name in two namespaces and drives them through their Ray shells.
"""
from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import select

from actors.ledger.core import LedgerCore, LedgerError, LedgerOptions
from actors.event_hub.core import EventHubCore
from actors.mailbox.core import MailboxCore
from actors.substrate.operations import ActorError, run_many
from storage.engine import create_engine
from storage.events import EventStore
from storage.leases import Fenced, ShardLease
from storage.ledger import LedgerStore
from storage.mailbox import MailboxStore
from storage.models import EventRow, MessageRow, ReservationRow, UsageRow

EVENT = {"type": "flow_update", "flow_id": "f", "data": {}}


@pytest.fixture
async def engine(db_url):
    found = create_engine(db_url)
    yield found
    await found.dispose()


def shard() -> str:
    return f"fence-{uuid.uuid4().hex[:10]}-0"


async def seqs(engine, tenant: str) -> list[int]:
    async with engine.connect() as conn:
        return list((await conn.execute(select(EventRow.seq).where(EventRow.tenant == tenant)
                                        .order_by(EventRow.seq))).scalars())


async def test_lease_epochs_go_up_and_fence_the_older_copy(engine):
    name = shard()
    old, new = ShardLease(engine, name), ShardLease(engine, name)
    assert await old.acquire() == 1 and await old.acquire() == 1  # taken once per copy
    assert await new.acquire() == 2
    async with engine.begin() as conn:
        await new.hold(conn)
    with pytest.raises(Fenced):
        async with engine.begin() as conn:
            await old.hold(conn)
    assert old.fenced
    with pytest.raises(Fenced):  # for good: a fenced copy never takes the lease back
        await old.acquire()


async def test_only_the_newest_copy_of_a_hub_shard_commits(engine, tenant):
    name = shard()
    old = EventHubCore(EventStore(engine, ShardLease(engine, name)))
    await old.store.lease.acquire()
    assert [e.seq for e in (await old.append([(tenant, [EVENT] * 3)]))[0]] == [1, 2, 3]
    new = EventHubCore(EventStore(engine, ShardLease(engine, name)))
    await new.store.lease.acquire()
    assert [e.seq for e in (await new.append([(tenant, [EVENT] * 2)]))[0]] == [4, 5]
    with pytest.raises(Fenced):  # the old copy believes the head is 3 and would hand out 4 again
        await old.append([(tenant, [EVENT])])
    assert await seqs(engine, tenant) == [1, 2, 3, 4, 5]
    assert (await old.heads([tenant])) == {tenant: 3}  # its seqs were handed back, nothing stored


async def test_racing_copies_never_share_a_seq(engine, tenant):
    """The old copy appends without pause while the new one takes the lease and appends: every
    acknowledged seq is stored once, and the stored seqs are 1..n without a gap."""
    name = shard()
    old = EventHubCore(EventStore(engine, ShardLease(engine, name)))
    await old.store.lease.acquire()
    await old.append([(tenant, [EVENT])])
    acknowledged: list[int] = [1]

    async def old_keeps_appending() -> None:
        for _ in range(200):
            try:
                acknowledged.extend(e.seq for e in (await old.append([(tenant, [EVENT])]))[0])
            except Fenced:
                return
            await asyncio.sleep(0)

    async def new_takes_over() -> None:
        await asyncio.sleep(0.02)
        new = EventHubCore(EventStore(engine, ShardLease(engine, name)))
        await new.store.lease.acquire()
        for _ in range(5):
            acknowledged.extend(e.seq for e in (await new.append([(tenant, [EVENT])]))[0])

    await asyncio.gather(old_keeps_appending(), new_takes_over())
    stored = await seqs(engine, tenant)
    assert old.store.lease.fenced
    assert sorted(acknowledged) == stored == list(range(1, len(stored) + 1))


async def test_a_stale_ledger_copy_cannot_spend_the_budget_again(engine, tenant):
    """Both copies hold the tenant's budget in memory with room for one call. The new copy admits
    it; the old copy's admission, made from its stale view, is refused at commit."""
    name = shard()
    options = LedgerOptions()
    old = LedgerCore(LedgerStore(engine, ShardLease(engine, name)), options)
    await old.store.lease.acquire()
    await old.set_budget(tenant, 0.01, 1.0)
    cost = (await old.estimate(tenant, "gpt-4o-mini", 10_000, 10_000))["total_cost"]
    assert 0.005 < cost <= 0.01  # one call fits, two do not
    await old.get_budget(tenant)  # the old copy is active with the budget in memory
    new = LedgerCore(LedgerStore(engine, ShardLease(engine, name)), options)
    await new.store.lease.acquire()
    await new.reserve(tenant, "gpt-4o-mini", 10_000, 10_000)
    answers = await run_many(old, ("reserve", "record_usage"), [
        ("reserve", tenant, ("gpt-4o-mini", 10_000, 10_000)),
        ("record_usage", tenant, ([{"model": "gpt-4o-mini", "input_tokens": 10, "output_tokens": 10}],)),
    ])
    assert [a["error"]["code"] for a in answers] == ["shard_fenced", "shard_fenced"]
    async with engine.connect() as conn:
        held = (await conn.execute(select(ReservationRow).where(ReservationRow.tenant == tenant))).all()
        usage = (await conn.execute(select(UsageRow).where(UsageRow.tenant == tenant))).all()
    assert len(held) == 1 and usage == []
    with pytest.raises(LedgerError) as refused:  # the new copy knows the month is spent
        await new.reserve(tenant, "gpt-4o-mini", 10_000, 10_000)
    assert refused.value.code == "budget_exceeded"


async def test_a_stale_mailbox_copy_cannot_move_a_message(engine, tenant):
    name = shard()
    old = MailboxCore(MailboxStore(engine, ShardLease(engine, name)))
    await old.store.lease.acquire()
    [sent] = await old.send(tenant, [{"receiver": "mapper", "sender": "v", "type": "notification", "content": {}}])
    new = MailboxCore(MailboxStore(engine, ShardLease(engine, name)))
    await new.store.lease.acquire()
    [got] = await new.receive(tenant, "mapper", 1)
    assert got["message_id"] == sent["message_id"]
    with pytest.raises(ActorError) as fenced:  # the old copy still sees the message ready
        await old.receive(tenant, "mapper", 1)
    assert fenced.value.status == 503 and fenced.value.code == "shard_fenced"
    await new.ack(tenant, "mapper", got["message_id"])
    async with engine.connect() as conn:
        state = (await conn.execute(select(MessageRow.state, MessageRow.attempts)
                                    .where(MessageRow.id == sent["message_id"]))).one()
    assert tuple(state) == ("acked", 1)


async def test_two_live_shard_actors_only_the_newer_commits(ray_session, db_url, tenant):
    """Two real hub and ledger actors of one shard name (a partitioned node's copy and its
    replacement): after the second starts, the first refuses every call with 503 shard_fenced."""
    import ray

    from actors.ledger.actor import CostLedger
    from actors.event_hub.actor import EventHub

    prefix = f"fence-{uuid.uuid4().hex[:8]}-"
    handles = []
    try:
        old_hub = EventHub.options(name=f"{prefix}event-hub-0", namespace=f"{prefix}a").remote(db_url)
        old_ledger = CostLedger.options(name=f"{prefix}cost-ledger-0", namespace=f"{prefix}a").remote(db_url)
        handles += [old_hub, old_ledger]
        await old_hub.ready.remote()
        await old_ledger.ready.remote()
        [first] = await old_hub.append.remote([(tenant, [EVENT])])
        assert [e.seq for e in first] == [1]
        [budget] = await old_ledger.call_many.remote([("set_budget", tenant, (0.01, 1.0))])
        assert "ok" in budget

        new_hub = EventHub.options(name=f"{prefix}event-hub-0", namespace=f"{prefix}b").remote(db_url)
        new_ledger = CostLedger.options(name=f"{prefix}cost-ledger-0", namespace=f"{prefix}b").remote(db_url)
        handles += [new_hub, new_ledger]
        await new_hub.ready.remote()
        await new_ledger.ready.remote()

        with pytest.raises(ActorError) as stale:
            await old_hub.append.remote([(tenant, [EVENT])])
        assert stale.value.code == "shard_fenced"
        with pytest.raises(ActorError):  # and it stops serving reads too
            await old_hub.read.remote(tenant, 0)
        [second] = await new_hub.append.remote([(tenant, [EVENT])])
        assert [e.seq for e in second] == [2]

        reserve = ("reserve", tenant, ("gpt-4o-mini", 10_000, 10_000))
        [refused] = await old_ledger.call_many.remote([reserve])
        assert refused["error"]["code"] == "shard_fenced"
        answers = await new_ledger.call_many.remote([reserve, reserve])  # concurrent: either may win
        assert sorted(a["error"]["code"] if "error" in a else "ok" for a in answers) == ["budget_exceeded", "ok"]
    finally:
        for handle in handles:
            ray.kill(handle, no_restart=True)
