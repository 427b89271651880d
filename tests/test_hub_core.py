"""EventHubCore without Ray, on the real databases."""
from __future__ import annotations

import asyncio

import pytest

from actors.substrate.limits import Limits
from actors.event_hub.core import EventHubCore, HubOptions, TenantLog
from storage.engine import create_engine
from storage.events import Event, EventStore


@pytest.fixture
async def store(db_url):
    engine = create_engine(db_url)
    yield EventStore(engine)
    await engine.dispose()


def ev(i: int, flow: str | None = "f", kind: str = "flow_update") -> dict:
    return {"type": kind, "flow_id": flow, "data": {"i": i}}


async def test_seqs_are_per_tenant_and_gap_free(store, tenant):
    hub = EventHubCore(store)
    a, b = tenant + "a", tenant + "b"
    stored = await hub.append([(a, [ev(0), ev(1)]), (b, [ev(2)]), (a, [ev(3)])])
    assert [[e.seq for e in events] for events in stored] == [[1, 2], [1], [3]]
    assert stored[0][1].tenant == a and stored[0][1].data == {"i": 1} and stored[0][1].ts > 0
    assert await hub.heads([a, b, tenant + "none"]) == {a: 3, b: 1, tenant + "none": 0}


async def test_concurrent_appends_share_commits(store, tenant):
    hub = EventHubCore(store)
    results = await asyncio.gather(*(hub.append([(tenant, [ev(i)])]) for i in range(200)))
    assert sorted(r[0][0].seq for r in results) == list(range(1, 201))
    assert hub.stats()["commits"] < 200
    page = await hub.read(tenant, 0, limit=1000)
    assert [e.seq for e in page["events"]] == list(range(1, 201))


async def test_read_uses_window_then_storage_and_filters_flows(store, tenant):
    hub = EventHubCore(store, HubOptions(window=3))
    await hub.append([(tenant, [ev(0, "a"), ev(1, "b"), ev(2, None, "budget_alert"), ev(3, "a"), ev(4, "b")])])
    assert [e.seq for e in (await hub.read(tenant, 3))["events"]] == [4, 5]  # from memory
    assert [e.seq for e in (await hub.read(tenant, 0))["events"]] == [1, 2, 3, 4, 5]  # from storage
    assert [e.seq for e in (await hub.read(tenant, 0, flow_ids=["a"]))["events"]] == [1, 3, 4]
    assert [e.seq for e in (await hub.read(tenant, 2, flow_ids=["b"]))["events"]] == [3, 5]
    assert [e.seq for e in (await hub.read(tenant, 0, limit=2))["events"]] == [1, 2]
    assert (await hub.read(tenant, 5))["events"] == []


async def test_retention_trims_and_reports_gaps(store, tenant):
    hub = EventHubCore(store, HubOptions(limits=Limits(event_retention_count=3), window=2))
    await hub.append([(tenant, [ev(i) for i in range(10)])])
    await asyncio.sleep(0.2)  # let the background trim run
    page = await hub.read(tenant, 2)
    assert page["gap"] and page["floor"] == 8 and page["head"] == 10
    ok = await hub.read(tenant, 7)
    assert not ok["gap"] and [e.seq for e in ok["events"]] == [8, 9, 10]
    restarted = EventHubCore(store, HubOptions(limits=Limits(event_retention_count=3)))
    assert (await restarted.read(tenant, 0))["floor"] == 8


async def test_restart_continues_from_storage(store, tenant):
    first = EventHubCore(store)
    await first.append([(tenant, [ev(0), ev(1)])])
    second = EventHubCore(store)
    assert [e.seq for e in (await second.append([(tenant, [ev(2)])]))[0]] == [3]
    assert [e.data["i"] for e in (await second.read(tenant, 0))["events"]] == [0, 1, 2]


async def test_failed_commit_acknowledges_nothing_and_reuses_seqs(store, tenant):
    hub = EventHubCore(store)
    await hub.append([(tenant, [ev(0)])])
    real_append = store.append

    async def broken(events):
        raise ConnectionError("database went away")

    store.append = broken
    with pytest.raises(ConnectionError):
        await hub.append([(tenant, [ev(1), ev(2)])])
    store.append = real_append
    assert [e.seq for e in (await hub.append([(tenant, [ev(3)])]))[0]] == [2]
    assert [e.data["i"] for e in (await hub.read(tenant, 0))["events"]] == [0, 3]


async def test_a_waiting_poll_looks_again_only_at_tenants_that_changed(store, tenant):
    hub = EventHubCore(store)
    mine = [f"{tenant}-{i}" for i in range(50)]
    looked: list[list[str]] = []
    look = hub._logs_of

    async def spy(tenants):
        tenants = list(tenants)
        looked.append(sorted(tenants))
        return await look(tenants)

    hub._logs_of = spy
    waiting = asyncio.create_task(hub.poll({t: 0 for t in mine}, timeout=5))
    await asyncio.sleep(0.05)
    looked.clear()
    for i in range(3):  # other tenants' commits wake the poll; it looks at none of its 50
        await hub.append([(f"{tenant}-other", [ev(i)])])
    await asyncio.sleep(0.05)
    assert not waiting.done()
    assert looked and all(names == [] for names in looked)
    await hub.append([(mine[7], [ev(9)]), (f"{tenant}-other", [ev(10)])])
    woke = await asyncio.wait_for(waiting, 2)
    assert list(woke["events"]) == [mine[7]] and woke["heads"] == {mine[7]: 1}
    assert looked[-1] == [mine[7]]


async def test_a_poll_looking_at_a_quiet_tenant_does_not_keep_it_in_memory(store, tenant):
    hub = EventHubCore(store)
    quiet, busy = f"{tenant}-quiet", f"{tenant}-busy"
    await hub.append([(quiet, [ev(0)])])
    await hub.append([(busy, [ev(1)])])
    assert hub.tenants.names()[-2:] == [quiet, busy]
    assert (await hub.poll({quiet: 1}, timeout=0))["events"] == {}
    assert hub.tenants.names()[-2:] == [quiet, busy]  # still the least recently used of the two
    hub.tenants.forget(quiet)
    assert (await hub.poll({quiet: 0}, timeout=0))["events"][quiet][0].seq == 1  # loaded again to look


async def test_a_forgotten_tenant_wakes_its_waiting_poll(store, tenant):
    hub = EventHubCore(store)
    waiting = asyncio.create_task(hub.poll({tenant: 0}, timeout=5))
    await asyncio.sleep(0.05)
    await store.append([Event(tenant, 1, "flow_update", "f", {"i": 1}, 0.0)])  # imported behind the hub
    hub.forget(tenant)
    woke = await asyncio.wait_for(waiting, 1)
    assert [e.seq for e in woke["events"][tenant]] == [1]


async def test_poll_returns_waits_wakes_and_times_out(store, tenant):
    hub = EventHubCore(store)
    other = tenant + "-x"
    await hub.append([(tenant, [ev(0)])])
    ready = await hub.poll({tenant: 0, other: 0}, timeout=5)
    assert [e.seq for e in ready["events"][tenant]] == [1] and other not in ready["events"]
    assert ready["heads"] == {tenant: 1} and ready["floors"] == {tenant: 1}

    waiting = asyncio.create_task(hub.poll({tenant: 1}, timeout=5, poll_id="r1:0"))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    assert hub.join("r1:0", {other: 0})
    await hub.append([(other, [ev(1)])])
    woke = await asyncio.wait_for(waiting, 2)
    assert list(woke["events"]) == [other]
    assert not hub.join("r1:0", {other: 0}), "the poll has returned"

    empty = await hub.poll({tenant: 1}, timeout=0.05)
    assert empty["events"] == {}


async def test_events_being_committed_are_not_visible_yet(store, tenant):
    """While a commit is writing, heads, reads and polls show none of its seqs: a socket that
    attaches meanwhile starts its live feed at the committed head, so the events in flight reach
    it (a head that ran ahead skipped them for good)."""
    gate = asyncio.Event()

    class SlowStore(EventStore):
        async def append(self, events):
            await gate.wait()
            await super().append(events)

    hub = EventHubCore(SlowStore(store.engine))
    gate.set()
    await hub.append([(tenant, [ev(0)])])
    gate.clear()
    writing = asyncio.create_task(hub.append([(tenant, [ev(1), ev(2)])]))
    await asyncio.sleep(0.05)
    assert await hub.heads([tenant]) == {tenant: 1}
    assert (await hub.read(tenant, 0))["head"] == 1
    assert (await hub.poll({tenant: 1}, timeout=0.01))["events"] == {}
    waiting = asyncio.create_task(hub.poll({tenant: 1}, timeout=5))
    gate.set()
    assert [e.seq for e in (await writing)[0]] == [2, 3]
    assert [e.seq for e in (await asyncio.wait_for(waiting, 2))["events"][tenant]] == [2, 3]
    assert await hub.heads([tenant]) == {tenant: 3}


async def test_join_that_overtakes_its_poll_is_kept_for_it(store, tenant):
    """A replica's join can reach the hub before the poll it sent earlier registers; the joined
    tenant's events must still wake that poll, not wait for its timeout."""
    clock = [1000.0]
    hub = EventHubCore(store, clock=lambda: clock[0])
    late, other = tenant + "-late", tenant + "-other"
    await hub.append([(late, [ev(0)]), (tenant, [ev(0)])])  # heads 1: the feed joins at cursor 1
    assert not hub.join("r2:0", {late: 1, tenant: 0}), "no poll of that id is waiting yet"
    waiting = asyncio.create_task(hub.poll({tenant: 1}, timeout=30, poll_id="r2:0"))
    await asyncio.sleep(0.05)
    assert not waiting.done(), "the join's own cursor for a tenant the poll carries does not win"
    await hub.append([(late, [ev(1)])])
    woke = await asyncio.wait_for(waiting, 2)
    assert [e.seq for e in woke["events"][late]] == [2]

    assert not hub.join("dead:0", {other: 0})  # a replica that never polls again
    clock[0] += 61
    hub.join("r3:0", {other: 0})
    assert "dead:0" not in hub._early_joins, "an early join whose poll never came expires"


async def test_poll_behind_window_reads_storage(store, tenant):
    hub = EventHubCore(store, HubOptions(window=2, read_limit=3))
    await hub.append([(tenant, [ev(i) for i in range(6)])])
    got = await hub.poll({tenant: 0}, timeout=1)
    assert [e.seq for e in got["events"][tenant]] == [1, 2, 3]


async def test_presence_aggregates_replicas_and_expires(store, tenant):
    now = [1000.0]
    hub = EventHubCore(store, HubOptions(presence_ttl=10), clock=lambda: now[0])
    hub.report_presence("r1", {tenant: {"*": 2, "f": 1}})
    hub.report_presence("r2", {tenant: {"*": 1, "f": 1, "g": 1}, "other": {"*": 5}})
    assert hub.presence([tenant]) == {tenant: {"connections": 3, "flows": {"f": 2, "g": 1}, "replicas": 2}}
    now[0] += 11
    hub.report_presence("r2", {})
    assert hub.presence([tenant])[tenant] == {"connections": 0, "flows": {}, "replicas": 0}


async def test_idle_tenants_are_evicted_and_reactivated(store, tenant):
    hub = EventHubCore(store, HubOptions(max_tenants=2))
    for i in range(4):
        await hub.append([(f"{tenant}-{i}", [ev(i)])])
    assert len(hub.tenants) == 2 and hub.tenants.evictions == 2
    assert [e.seq for e in (await hub.append([(f"{tenant}-0", [ev(9)])]))[0]] == [2]


def test_tenant_log_window_bounds():
    from collections import deque

    from storage.events import Event

    log = TenantLog(head=5, floor=1, window=deque(Event("t", s, "x", None, {}, 0.0) for s in (4, 5)))
    assert log.after(5, 10) == []
    assert [e.seq for e in log.after(3, 10)] == [4, 5]
    assert log.after(2, 10) is None
    assert [e.seq for e in log.after(3, 1)] == [4]
