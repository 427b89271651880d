"""Quotas and rate limits as state logic: the limits model, the quota shard's buckets and slots,
the replicas' leased allotments, and retention by bytes and age in the hub."""
from __future__ import annotations

import asyncio

import pytest

from actors.event_hub.core import EventHubCore, HubOptions
from actors.substrate.limits import Limits, LimitsCache, LimitsError
from actors.substrate.metrics import RecordingSink
from actors.substrate.operations import ActorError
from actors.quotas.client import Allotments
from actors.quotas.core import QuotaCore, QuotaError, QuotaOptions
from storage.engine import create_engine
from storage.events import EventStore


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("overrides, names", [
    ({"connections": -1}, "connections"), ({"connections": 1.5}, "connections"), ({"patterns": True}, "patterns"),
    ({"nope": 1}, "unknown limit"), ({"events_per_second": 0}, "events_per_second"),
    ({"events_per_second": float("nan")}, "events_per_second"), ({"requests_per_second": {"x": 1}}, "route class"),
    ({"requests_per_second": {"events": -5}}, "requests_per_second.events"), ({"requests_per_second": 5}, "object"),
    ({"flow_weight": 0}, "flow_weight"), ({"queued_flows": 10**10}, "queued_flows"),
])
def test_bad_limits_are_refused_naming_the_field(overrides, names):
    with pytest.raises(LimitsError, match=names):
        Limits().with_overrides(overrides)


def test_overrides_merge_on_the_defaults():
    limits = Limits(connections=7).with_overrides({"requests_per_second": {"llm": 3}, "patterns": 0})
    assert limits.connections == 7 and limits.patterns == 0 and limits.rate("requests:llm") == 3.0
    assert limits.rate("requests:events") == Limits().requests_per_second["events"]
    assert Limits.from_json('{"events_per_second": 2}').rate("events") == 2.0 and Limits.from_json("") == Limits()


class Storage:
    """The tenant_limits table as `load_many` sees it: counts queries, can hold them or fail."""

    def __init__(self, rows: dict[str, dict]) -> None:
        self.rows, self.queries, self.away = rows, [], False
        self.gate = asyncio.Event()
        self.gate.set()

    async def load_many(self, tenants):
        self.queries.append(sorted(tenants))
        await self.gate.wait()
        if self.away:
            raise RuntimeError("database away")
        return {t: self.rows[t] for t in tenants if t in self.rows}


async def test_cache_loads_pushes_expires_and_survives_storage_failure():
    clock, storage = Clock(), Storage({"t": {"connections": 3}})
    cache = LimitsCache(storage.load_many, Limits(connections=9), ttl=5, clock=clock)
    assert (await cache.of("t")).connections == 3 and (await cache.of("u")).connections == 9
    assert (await cache.of("t")).connections == 3 and len(storage.queries) == 2  # cached
    cache.put("t", {"connections": 4})
    assert cache.peek("t").connections == 4 and (await cache.of("t")).connections == 4
    clock.now += 11  # unused for over 2 x ttl: the next use waits for the read
    storage.away = True
    assert (await cache.of("t")).connections == 4  # storage away: the known value stays
    assert (await cache.of("new")).connections == 9  # nothing known: the defaults
    assert cache.put("t", {"connections": "bad"}).connections == 9  # a field invalid under these defaults is dropped


async def test_reads_due_at_one_moment_are_one_query():
    clock, storage = Clock(), Storage({f"t{i}": {"connections": i} for i in range(50)})
    cache = LimitsCache(storage.load_many, Limits(connections=100), ttl=5, clock=clock)
    storage.gate.clear()
    uses = [asyncio.ensure_future(cache.of(f"t{i % 60}")) for i in range(120)]  # 60 tenants, each used twice
    await asyncio.sleep(0)
    storage.gate.set()
    found = await asyncio.gather(*uses)
    assert [limits.connections for limits in found[:60]] == list(range(50)) + [100] * 10
    assert [len(q) for q in storage.queries] == [60]  # one query, each tenant once
    clock.now += 11
    assert (await cache.of_many(["t1", "t2", "x", "t1"]))["t2"].connections == 2
    assert storage.queries[1:] == [["t1", "t2", "x"]]


async def test_a_tenant_in_use_keeps_its_limits_while_they_are_read_again():
    clock, storage = Clock(), Storage({"t": {"connections": 3}})
    cache = LimitsCache(storage.load_many, Limits(), ttl=5, clock=clock)
    assert (await cache.of("t")).connections == 3
    storage.rows["t"] = {"connections": 7}  # changed by a push this shard missed
    clock.now += 6
    storage.gate.clear()  # the re-read hangs: the request does not wait for it
    assert (await asyncio.wait_for(cache.of("t"), 1)).connections == 3
    storage.gate.set()
    for _ in range(5):
        await asyncio.sleep(0)
    assert cache.peek("t").connections == 7 and len(storage.queries) == 2


async def test_a_re_read_takes_along_the_tenants_in_use_that_are_half_way_to_due():
    clock, storage = Clock(), Storage({})
    cache = LimitsCache(storage.load_many, Limits(), ttl=4, clock=clock)
    await cache.of_many(["early", "idle"])
    clock.now += 2
    await cache.of("late")
    clock.now += 0.5
    await cache.of("late")  # in use; its limits are 0.5 s old
    clock.now += 1.6
    assert await cache.of("early") == Limits()  # 4.1 s old: re-read in the background
    for _ in range(5):
        await asyncio.sleep(0)
    # "idle" (last used 4.1 s ago, within 2 x ttl) and "late" (2.1 s old: half-way) go along
    assert storage.queries[2:] == [["early", "idle", "late"]]
    clock.now += 5
    await cache.of("late")  # 5 s old: re-read; "idle", unused for 9.1 s, stays out
    for _ in range(5):
        await asyncio.sleep(0)
    assert storage.queries[3:] == [["early", "late"]]


async def test_a_push_wins_over_a_read_that_began_before_it():
    clock, storage = Clock(), Storage({"t": {"connections": 3}})
    cache = LimitsCache(storage.load_many, Limits(), ttl=5, clock=clock)
    storage.gate.clear()
    use = asyncio.ensure_future(cache.of("t"))
    await asyncio.sleep(0)
    cache.put("t", {"connections": 8})  # the operator's change, stored and pushed while the read is out
    storage.gate.set()
    assert (await use).connections == 8 and cache.peek("t").connections == 8


async def test_a_bucket_grants_its_rate_whatever_the_number_of_replicas():
    clock = Clock()
    core = QuotaCore(LimitsCache(None, Limits(events_per_second=100)), QuotaOptions(lease_fraction=0.05), clock=clock)
    granted = 0
    for step in range(200):  # 2 s, three replicas asking every 10 ms for as much as they can
        for replica in ("a", "b", "c"):
            granted += (await core.lease("t", replica, "events", 1))["granted"]
        clock.now += 0.01
    assert 100 + 200 - 2 <= granted <= 100 + 200 + 1  # one second of burst, then the rate
    await core.lease("t", "a", "events", 1)  # the token of the last 10 ms
    refused = await core.lease("t", "a", "events", 1)
    assert refused["granted"] == 0 and 0 < refused["retry_after"] <= 0.011


async def test_a_lease_carries_a_few_tokens_and_a_large_ask_runs_into_debt():
    clock = Clock()
    core = QuotaCore(LimitsCache(None, Limits(events_per_second=100)), QuotaOptions(lease_fraction=0.05), clock=clock)
    assert (await core.lease("t", "a", "events", 1))["granted"] == 5  # 0.05 s of the rate
    assert (await core.lease("t", "a", "events", 500))["granted"] == 0  # a large ask waits for a full bucket
    clock.now += 0.1
    big = await core.lease("t", "a", "events", 500)  # more than a second's worth: admitted when full
    assert big["granted"] == 500 and core.buckets[("t", "events")].tokens < 0
    clock.now += 1.0
    debt = await core.lease("t", "a", "events", 1)
    assert debt["granted"] == 0 and debt["retry_after"] > 1  # the tenant waits for its debt to refill
    with pytest.raises(QuotaError):
        await core.lease("t", "a", "nothing", 1)
    with pytest.raises(QuotaError):
        await core.lease("t", "a", "events", 0)


async def test_connection_slots_are_capped_released_and_expire_with_their_replica():
    clock = Clock()
    core = QuotaCore(LimitsCache(None, Limits(connections=2, subscriptions_per_socket=4)),
                     QuotaOptions(slot_ttl=15), clock=clock)
    first = await core.acquire("t", "r1")
    assert first["admitted"] and first["subscriptions_per_socket"] == 4
    assert (await core.acquire("t", "r2"))["admitted"]
    refused = await core.acquire("t", "r1")
    assert not refused["admitted"] and refused["connections"] == 2 and refused["limit"] == 2
    assert (await core.acquire("u", "r1"))["admitted"]  # another tenant has its own slots
    await core.release("t", "r1")
    assert (await core.acquire("t", "r1"))["admitted"]
    clock.now += 10
    await core.hold("t", "r1", 1)  # r1 still reports; r2 went silent
    clock.now += 10
    assert (await core.usage("t"))["connections"] == 1 and (await core.acquire("t", "r3"))["admitted"]
    await core.hold("t", "r1", 0)
    assert (await core.usage("t"))["connections"] == 1


def replica_of(core: QuotaCore, replica: str = "replica", calls: list | None = None, delay: float = 0.0):
    """The lease function a replica's Allotments call: straight to the quota core, recording asks."""
    async def lease(tenant, limit, amount, want):
        if calls is not None:
            calls.append(want)
        if delay:
            await asyncio.sleep(delay)
        return await core.lease(tenant, replica, limit, amount, want)
    return lease


async def test_allotments_spend_locally_and_remember_refusals():
    clock = Clock()
    core = QuotaCore(LimitsCache(None, Limits(requests_per_second={"events": 100})), QuotaOptions(lease_fraction=0.1),
                     clock=clock)
    calls = []
    sink = RecordingSink()
    allotments = Allotments(replica_of(core, calls=calls), clock=clock, metrics=sink)
    results = [await allotments.admit("t", "requests:events") for _ in range(300)]
    admitted = results.count(None)
    assert admitted == 100  # the burst
    assert len(calls) < 20  # 10 tokens a lease, and the refusal is remembered: no call per request
    assert sink.total("raytenant_limit_refusals", limit="requests:events") == 200
    clock.now += 0.5
    assert (await allotments.admit("t", "requests:events")) is None  # refilled


async def test_concurrent_requests_share_one_lease():
    clock = Clock()
    core = QuotaCore(LimitsCache(None, Limits(requests_per_second={"costs": 1000})), QuotaOptions(lease_fraction=0.001),
                     clock=clock)
    calls = []
    allotments = Allotments(replica_of(core, calls=calls, delay=0.01), clock=clock)
    results = await asyncio.gather(*(allotments.admit("t", "requests:costs") for _ in range(50)))
    assert results.count(None) == 50 and len(calls) <= 3


async def test_a_burst_within_the_limit_is_admitted_whole_however_it_arrives():
    """Requests keep arriving while a lease is out: those that joined it after it asked are served
    by the next leases, and none is refused while the shard grants (a cap of three rounds refused
    6-9 of 500 in a probe, and 50 of 500 concurrent reservations once in the HTTP suite)."""
    calls = []

    async def grants_what_is_asked(tenant, limit, amount, want):  # a shard whose bucket holds plenty
        calls.append(want)
        await asyncio.sleep(0.005)
        return {"granted": want, "retry_after": 0.0, "ttl": 5.0}

    allotments = Allotments(grants_what_is_asked)

    async def arriving(i):
        await asyncio.sleep(0.00005 * i)  # 2,000 requests over 100 ms, leases of 5 ms
        return await allotments.admit("t", "requests:costs")

    results = await asyncio.gather(*(arriving(i) for i in range(2_000)))
    assert results.count(None) == 2_000, f"{2_000 - results.count(None)} refused within the limit, leases {calls}"


async def test_three_replicas_admit_the_limit_together():
    clock = Clock()
    core = QuotaCore(LimitsCache(None, Limits(requests_per_second={"flows": 50})), clock=clock)

    replicas = [Allotments(replica_of(core, name), clock=clock) for name in ("a", "b", "c")]
    admitted = 0
    for step in range(1000):  # 10 s, each replica offered 20x the rate
        for allotments in replicas:
            for _ in range(3):
                admitted += (await allotments.admit("t", "requests:flows")) is None
        clock.now += 0.01
    allowed = 50 + 50 * 10
    assert 0.9 <= admitted / allowed <= 1.1, admitted


async def test_an_unreachable_quota_shard_admits():
    async def lease(tenant, name, amount, want):
        raise ActorError(503, "quotas_unavailable", "away")

    allotments = Allotments(lease)
    assert all([await allotments.admit("t", "requests:events") is None for _ in range(5)])


@pytest.fixture
async def store(db_url):
    engine = create_engine(db_url)
    yield EventStore(engine)
    await engine.dispose()


async def test_a_read_that_began_before_a_forget_is_not_used_and_the_caller_reads_again():
    storage = Storage({"t": {"connections": 3}})
    cache = LimitsCache(storage.load_many, Limits(connections=9), clock=Clock())
    storage.gate.clear()
    use = asyncio.ensure_future(cache.of("t"))
    await asyncio.sleep(0)
    cache.forget("t")  # purged and imported while its limits were being read
    storage.rows["t"] = {"connections": 4}
    storage.gate.set()
    assert (await use).connections == 4 and len(storage.queries) == 2  # read again, not the defaults
    assert cache._loading == {} and cache._pushes == {}


def test_known_limits_of_many_tenants_are_answered_without_waiting():
    storage = Storage({"a": {"connections": 1}})
    cache = LimitsCache(storage.load_many, Limits(connections=9), clock=Clock())
    cache.put("a", {"connections": 1})
    cache.put("b", None)
    answer = cache.of_many(["a", "b", "a"])
    with pytest.raises(StopIteration) as done:  # finished at its first step: no task, no await
        answer.send(None)
    assert {t: limits.connections for t, limits in done.value.value.items()} == {"a": 1, "b": 9}


async def test_retention_by_bytes_and_age_trims_the_oldest(store, tenant):
    clock = [10_000.0]
    hub = EventHubCore(store, HubOptions(limits=Limits(event_retention_bytes=10_000, event_retention_seconds=100)),
                       clock=lambda: clock[0])
    big = {"type": "flow_update", "flow_id": None, "data": {"blob": "x" * 3_000}}
    await hub.append([(tenant, [big] * 3)])  # about 9 KB: all kept
    assert await hub.enforce_retention() == 0
    await hub.append([(tenant, [big] * 2)])  # about 15 KB: the two oldest go
    assert await hub.enforce_retention() == 1
    page = await hub.read(tenant, 0)
    assert page["gap"] and page["floor"] == 3
    assert [e.seq for e in (await hub.read(tenant, 2))["events"]] == [3, 4, 5]
    clock[0] += 50
    await hub.append([(tenant, [{"type": "flow_update", "flow_id": None, "data": {}}])])
    clock[0] += 60  # seqs 3-5 are now 110 s old, seq 6 is 60 s old
    assert await hub.enforce_retention() == 1
    assert (await hub.read(tenant, 5))["events"][0].seq == 6 and (await hub.read(tenant, 4))["gap"]
    hub.set_limits(tenant, {"event_retention_seconds": 10})
    clock[0] += 1
    await hub.enforce_retention()
    assert (await hub.read(tenant, 6))["floor"] == 7  # nothing young enough stays
    assert (await store.read(tenant, 0, limit=10)) == []


async def test_retention_measures_tenants_under_the_same_limits_in_one_query(store, tenant):
    hub = EventHubCore(store, HubOptions(limits=Limits(event_retention_bytes=10_000)))
    queries = []
    measure = store.retention_floors

    async def counted(tenants, max_bytes, oldest_ts):
        queries.append((sorted(tenants), max_bytes))
        return await measure(tenants, max_bytes, oldest_ts)

    store.retention_floors = counted
    big = {"type": "flow_update", "flow_id": None, "data": {"blob": "x" * 3_000}}
    names = [f"{tenant}-{i}" for i in range(4)]
    hub.set_limits(names[3], {"event_retention_bytes": 4_000})
    for count, name in zip((5, 2, 4, 3), names):
        await hub.append([(name, [big] * count)])
    assert await hub.enforce_retention() == 3
    assert queries == [(names[:3], 10_000), ([names[3]], 4_000)]  # two retentions, two queries
    floors = [(await hub.read(name, 0))["floor"] for name in names]
    assert floors == [3, 1, 2, 3]  # ~9 KB kept under 10 KB; one event (~3 KB) under 4 KB


async def test_events_are_not_trimmed_by_limits_that_could_not_be_read(store, tenant):
    storage = Storage({tenant: {"event_retention_count": 3}})
    storage.away = True
    limits = LimitsCache(storage.load_many, Limits(event_retention_count=2), clock=Clock())
    hub = EventHubCore(store, limits=limits)
    await hub.append([(tenant, [ev_data(i) for i in range(5)])])
    assert len(storage.queries) == 1  # one failed read, not one per retry
    page = await hub.read(tenant, 0)
    assert not page["gap"] and [e.seq for e in page["events"]] == [1, 2, 3, 4, 5]
    assert await hub.enforce_retention() == 0 and len(await store.read(tenant, 0, limit=10)) == 5
    storage.away = False
    await hub.append([(tenant, [ev_data(5)])])  # read now: the tenant keeps its last 3, not 2
    assert (await hub.read(tenant, 0))["floor"] == 4


def ev_data(i: int) -> dict:
    return {"type": "flow_update", "flow_id": None, "data": {"i": i}}


async def test_retention_spares_a_tenant_forgotten_while_it_was_measured(store, tenant):
    hub = EventHubCore(store, HubOptions(limits=Limits(event_retention_bytes=4_000)))
    big = {"type": "flow_update", "flow_id": None, "data": {"blob": "x" * 3_000}}
    await hub.append([(tenant, [big] * 3)])
    measure = store.retention_floors

    async def imported_meanwhile(tenants, max_bytes, oldest_ts):
        floors = await measure(tenants, max_bytes, oldest_ts)
        hub.forget(tenant)  # purged and imported anew while the sweep measured it
        await hub.heads([tenant])  # and active again
        return floors

    store.retention_floors = imported_meanwhile
    assert await hub.enforce_retention() == 0
    assert [e.seq for e in await store.read(tenant, 0, limit=10)] == [1, 2, 3]
    assert (await hub.read(tenant, 0))["floor"] == 1


async def test_retention_trims_what_it_decided_when_a_later_query_fails(store, tenant, monkeypatch):
    import actors.event_hub.core as hub_core

    monkeypatch.setattr(hub_core, "RETENTION_ROWS", 3)  # one tenant of three events per query
    hub = EventHubCore(store, HubOptions(limits=Limits(event_retention_bytes=4_000)))
    big = {"type": "flow_update", "flow_id": None, "data": {"blob": "x" * 3_000}}
    first, second = f"{tenant}-a", f"{tenant}-b"
    await hub.append([(first, [big] * 3), (second, [big] * 3)])
    measure, queries = store.retention_floors, []

    async def second_fails(tenants, max_bytes, oldest_ts):
        queries.append(list(tenants))
        if len(queries) > 1:
            raise ConnectionError("database went away")
        return await measure(tenants, max_bytes, oldest_ts)

    store.retention_floors = second_fails
    with pytest.raises(ConnectionError):
        await hub.enforce_retention()
    assert queries == [[first], [second]]
    assert [e.seq for e in await store.read(first, 0, limit=10)] == [3]  # the first decision was kept
    assert [e.seq for e in await store.read(second, 0, limit=10)] == [1, 2, 3]


async def test_stored_overrides_of_many_tenants_are_read_in_one_query(db_url, tenant):
    from storage.limits import LimitsStore

    engine = create_engine(db_url)
    try:
        store = LimitsStore(engine)
        await store.put(f"{tenant}-a", {"connections": 2})
        await store.put(f"{tenant}-b", {"patterns": 5})
        found = await store.get_many([f"{tenant}-a", f"{tenant}-b", f"{tenant}-none"])
        assert found == {f"{tenant}-a": {"connections": 2}, f"{tenant}-b": {"patterns": 5}}
        assert await store.get_many([]) == {}
        cache = LimitsCache(store.get_many, Limits(connections=9))
        limits = await cache.of_many([f"{tenant}-a", f"{tenant}-b", f"{tenant}-none"])
        assert [limits[f"{tenant}-{k}"].connections for k in ("a", "b", "none")] == [2, 9, 9]
        assert limits[f"{tenant}-b"].patterns == 5
    finally:
        await engine.dispose()
