"""Tenant isolation of faults in every group commit, on PostgreSQL and SQLite.

One tenant's write that the database refuses races 100 good writes of 100 other tenants: all 100
commit and are acknowledged, and only the poisoned operation fails. The poison bypasses the ingress
(which refuses it at the boundary) and reaches the core as a buggy or compromised caller would.
"""
from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import func, select

from actors.substrate.batching import Batcher, Refused
from actors.ledger.core import LedgerCore
from actors.event_hub.core import EventHubCore
from actors.learning.core import LearningCore
from actors.mailbox.core import MailboxCore
from actors.substrate.operations import run_many
from storage.engine import create_engine
from storage.events import EventStore
from storage.ledger import LedgerStore
from storage.mailbox import MailboxStore
from storage.models import EventRow, MessageRow, PatternRow, UsageRow
from storage.patterns import PatternStore

GOOD = 100


@pytest.fixture
async def engine(db_url):
    found = create_engine(db_url)
    yield found
    await found.dispose()


def tenants() -> tuple[str, list[str]]:
    run = uuid.uuid4().hex[:8]
    return f"bad-{run}", [f"good-{run}-{i}" for i in range(GOOD)]


async def count(engine, model, tenant_ids: list[str]) -> dict[str, int]:
    query = select(model.tenant, func.count()).where(model.tenant.in_(tenant_ids)).group_by(model.tenant)
    async with engine.connect() as conn:
        return {t: n for t, n in await conn.execute(query)}


async def race(core, public: tuple[str, ...], poisoned: tuple, good: list[tuple]) -> list[dict]:
    """The poisoned call first, every tenant already active, so all share one group commit."""
    await core.tenants.activate([poisoned[1], *(call[1] for call in good)])
    answers = await run_many(core, public, [poisoned, *good])
    return answers


async def test_event_hub_commits_every_other_tenant(engine, backend):
    bad, good = tenants()
    hub = EventHubCore(EventStore(engine))
    poisons = [{"type": "flow_update", "flow_id": None, "data": {"p": float("nan")}}]
    if backend == "postgresql":  # refused by PostgreSQL itself, not by the serializer
        poisons.append({"type": "flow_update", "flow_id": "f\x00", "data": {}})
    for poison in poisons:
        requests = [(bad, [poison])] + [(t, [{"type": "flow_update", "flow_id": "f", "data": {"i": 1}}]) for t in good]
        answers = await asyncio.gather(*(hub.append([r]) for r in requests), return_exceptions=True)
        assert isinstance(answers[0], Exception)
        assert all(isinstance(a, list) for a in answers[1:]), [a for a in answers[1:] if not isinstance(a, list)][:3]
    stored = await count(engine, EventRow, [bad, *good])
    assert stored == {t: len(poisons) for t in good}  # gap-free seqs for every good tenant
    assert await hub.heads([bad]) == {bad: 0}
    assert hub._commits.isolations >= 1


async def test_ledger_commits_every_other_tenant(engine):
    bad, good = tenants()
    core = LedgerCore(LedgerStore(engine))
    usage = {"model": "gpt-4o-mini", "input_tokens": 10, "output_tokens": 5}
    poisoned = ("record_usage", bad, ([{**usage, "input_tokens": 2**64}],))  # no BIGINT holds it
    answers = await race(core, ("record_usage",), poisoned, [("record_usage", t, ([usage],)) for t in good])
    assert answers[0]["error"]["code"] == "value_not_storable"
    assert all("ok" in a for a in answers[1:]), [a for a in answers[1:] if "ok" not in a][:3]
    assert await count(engine, UsageRow, [bad, *good]) == {t: 1 for t in good}
    assert core._commits.isolations >= 1
    # The poisoned tenant's memory was undone: its next good record commits and counts once.
    [answer] = await run_many(core, ("record_usage",), [("record_usage", bad, ([usage],))])
    assert "ok" in answer and await count(engine, UsageRow, [bad]) == {bad: 1}


async def test_mailbox_commits_every_other_tenant(engine):
    bad, good = tenants()
    core = MailboxCore(MailboxStore(engine))
    message = {"receiver": "mapper", "sender": "validator", "type": "notification", "content": {"x": 1}}
    poisoned = ("send", bad, ([{**message, "content": {"x": float("inf")}}],))
    answers = await race(core, ("send",), poisoned, [("send", t, ([message],)) for t in good])
    assert answers[0]["error"]["code"] == "value_not_storable"
    assert all("ok" in a for a in answers[1:])
    assert await count(engine, MessageRow, [bad, *good]) == {t: 1 for t in good}
    assert core._commits.isolations >= 1
    # Nothing of the refused send is queued: a receive finds nothing, not a message stuck in flight.
    [received] = await run_many(core, ("receive",), [("receive", bad, ("mapper", 10, 0.0))])
    assert received == {"ok": []}


async def test_learning_commits_every_other_tenant(engine):
    bad, good = tenants()
    core = LearningCore(PatternStore(engine))

    def correction(value) -> dict:
        return {"type": "correction", "original": {"f": "a"}, "corrected": {"f": "b"}, "context": {"v": value}}

    poisoned = ("learn", bad, ([correction(float("nan"))],))
    answers = await race(core, ("learn",), poisoned, [("learn", t, ([correction(1)],)) for t in good])
    assert answers[0]["error"]["code"] == "value_not_storable"
    assert all("ok" in a for a in answers[1:])
    assert await count(engine, PatternRow, [bad, *good]) == {t: 1 for t in good}
    assert core._commits.isolations >= 1
    assert (await core._state(bad)).patterns == {}


async def test_outage_fails_the_batch_without_splitting():
    """A lost database is not one tenant's fault: splitting would only multiply the waits."""
    flushes: list[int] = []

    async def flush(items: list[int]) -> list[int]:
        flushes.append(len(items))
        raise ConnectionResetError("database went away")

    batcher: Batcher[int, int] = Batcher(flush, isolate="split")
    gate = asyncio.Event()
    first = asyncio.ensure_future(batcher.submit(0))
    await asyncio.sleep(0)
    rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 9)]
    gate.set()
    results = await asyncio.gather(first, *rest, return_exceptions=True)
    assert all(isinstance(r, ConnectionResetError) for r in results)
    assert flushes == [1, 8]


async def test_split_finds_the_one_bad_item_in_log_flushes():
    flushes: list[list[int]] = []

    async def flush(items: list[int]) -> list[int]:
        flushes.append(items)
        if 13 in items:
            raise ValueError("refused")
        return items

    batcher: Batcher[int, int] = Batcher(flush, isolate="split")
    blocker = asyncio.ensure_future(batcher.submit(-1))
    await asyncio.sleep(0)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(64)), blocker, return_exceptions=True)
    assert isinstance(results[13], ValueError)
    assert [r for i, r in enumerate(results[:64]) if i != 13] == [i for i in range(64) if i != 13]
    assert len(flushes) <= 2 + 2 * 6 + 1


async def test_retry_mode_refuses_every_item_and_solo_goes_alone():
    async def flush(items: list[int]) -> list[int]:
        if 7 in items and len(items) > 1:
            raise ValueError("refused")
        return items

    batcher: Batcher[int, int] = Batcher(flush, isolate="retry")
    blocker = asyncio.ensure_future(batcher.submit(-1))
    await asyncio.sleep(0)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(10)), blocker, return_exceptions=True)
    assert all(isinstance(r, Refused) for r in results[:10])
