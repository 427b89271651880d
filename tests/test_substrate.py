"""The shard substrate: batching, activation, turns, placement and race-safe shard creation."""
from __future__ import annotations

import asyncio
import collections
import threading

import pytest

from actors.substrate.activation import ActivationTable
from actors.substrate.batching import Batcher, ShardedBatcher
from actors.substrate.placement import NAMESPACE, get_or_create, kill_all, shard_for, shard_name
from actors.substrate.turns import TenantTurns


async def test_batcher_coalesces_concurrent_submits():
    calls = []

    async def flush(items):
        calls.append(list(items))
        await asyncio.sleep(0.01)
        return [i * 2 for i in items]

    batcher = Batcher(flush)
    first = asyncio.create_task(batcher.submit(0))
    await asyncio.sleep(0.001)
    assert calls == [[0]], "an item leaves at once when nothing is in flight"
    rest = await asyncio.gather(*(batcher.submit(i) for i in range(1, 100)))
    assert [await first, *rest] == [i * 2 for i in range(100)]
    assert len(calls) == 2 and calls[1] == list(range(1, 100)), "what came meanwhile went together"


async def test_batcher_errors_per_item_and_per_flush():
    async def flush(items):
        if "boom" in items:
            raise RuntimeError("flush failed")
        return [ValueError(i) if i == "bad" else i.upper() for i in items]

    batcher = Batcher(flush)
    assert await batcher.submit("ok") == "OK"
    with pytest.raises(ValueError):
        await batcher.submit("bad")
    with pytest.raises(RuntimeError):
        await batcher.submit("boom")
    assert await batcher.submit_many(["a", "b"]) == ["A", "B"], "a failed flush does not stop the batcher"


async def test_batcher_respects_max_batch_and_result_count():
    sizes = []

    async def flush(items):
        sizes.append(len(items))
        await asyncio.sleep(0)
        return items

    batcher = Batcher(flush, max_batch=10, linger=0.001)
    await asyncio.gather(*(batcher.submit(i) for i in range(35)))
    assert max(sizes) <= 10 and sum(sizes) == 35

    async def short(items):
        return items[:-1]

    with pytest.raises(RuntimeError, match="results"):
        await Batcher(short).submit(1)


async def test_a_window_of_two_flushes_overlaps_them():
    """While one flush is in flight, what arrives goes out in a second at once: the database works
    on one transaction while the next is composed."""
    started, release = [], asyncio.Event()

    async def flush(items):
        started.append(list(items))
        await release.wait()
        return items

    batcher = Batcher(flush, window=2, keys=lambda item: [item])
    first = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(batcher.submit(2))
    third = asyncio.create_task(batcher.submit(3))
    await asyncio.sleep(0.01)
    assert started == [[1], [2, 3]], "the second flush started while the first was in flight"
    fourth = asyncio.create_task(batcher.submit(4))
    await asyncio.sleep(0.01)
    assert len(started) == 2, "no third flush while two are in flight"
    release.set()
    assert await asyncio.wait_for(asyncio.gather(first, second, third, fourth), 5) == [1, 2, 3, 4]
    assert started[2] == [4]
    with pytest.raises(ValueError):
        Batcher(flush, window=2)


async def test_writes_to_a_row_in_flight_wait_for_it_and_keep_their_order():
    """Two transactions in flight may commit in either order, so an item writing a row that the
    flush in flight writes waits for it, and so does a later item sharing a row with the held one;
    items on other rows go on."""
    flushed, gates = [], {}

    async def flush(items):
        flushed.append([name for name, _ in items])
        gate = gates.setdefault(items[0][0], asyncio.Event())
        await gate.wait()
        return [name for name, _ in items]

    batcher = Batcher(flush, window=2, keys=lambda item: item[1])
    first = asyncio.create_task(batcher.submit(("a", {"m1"})))
    await asyncio.sleep(0.01)
    later = [asyncio.create_task(batcher.submit(item)) for item in
             [("b", {"m1", "m2"}), ("c", {"m3"}), ("d", {"m2"}), ("e", {"m4"})]]
    await asyncio.sleep(0.01)
    assert flushed == [["a"], ["c", "e"]], "b writes m1 (in flight), d writes m2 (held with b)"
    gates["c"].set()
    await asyncio.sleep(0.01)
    assert flushed == [["a"], ["c", "e"]], "b and d still wait for a"
    gates["a"].set()
    gates["b"] = asyncio.Event()
    gates["b"].set()
    done = await asyncio.wait_for(asyncio.gather(first, *later), 5)
    assert done == ["a", "b", "c", "d", "e"]
    assert flushed[2] == ["b", "d"], "once a landed, the held items went out in their order"


async def test_an_operation_run_again_alone_also_waits_for_its_rows_in_flight():
    from actors.substrate.batching import SOLO

    flushed, release = [], asyncio.Event()

    async def flush(items):
        flushed.append([name for name, _ in items])
        if items[0][0] == "a":
            await release.wait()
        return [name for name, _ in items]

    async def alone(item):
        SOLO.set(True)
        return await batcher.submit(item)

    batcher = Batcher(flush, window=2, keys=lambda item: item[1], isolate="retry")
    first = asyncio.create_task(batcher.submit(("a", {"m1"})))
    await asyncio.sleep(0.01)
    solo = asyncio.create_task(alone(("s", {"m1"})))
    await asyncio.sleep(0.01)
    assert flushed == [["a"]], "the solo retry writes m1, which is in flight"
    release.set()
    assert await asyncio.wait_for(asyncio.gather(first, solo), 5) == ["a", "s"]
    assert flushed == [["a"], ["s"]]


async def test_a_failed_flush_in_a_window_fails_only_its_own_items():
    release = asyncio.Event()

    async def flush(items):
        await release.wait()
        if "bad" in items:
            raise RuntimeError("refused")
        return items

    batcher = Batcher(flush, window=2, keys=lambda item: [item])
    bad = asyncio.create_task(batcher.submit("bad"))
    await asyncio.sleep(0.01)
    good = asyncio.create_task(batcher.submit("good"))
    await asyncio.sleep(0.01)
    release.set()
    with pytest.raises(RuntimeError):
        await bad
    assert await good == "good"


async def test_sharded_batcher_makes_one_call_per_shard():
    calls = collections.Counter()

    def flush_for(shard):
        async def flush(items):
            calls[shard] += 1
            await asyncio.sleep(0.01)
            return [(shard, i) for i in items]

        return flush

    sharded = ShardedBatcher(flush_for)
    results = await asyncio.gather(*(sharded.submit(i % 3, i) for i in range(60)))
    assert results == [(i % 3, i) for i in range(60)]
    assert all(n <= 2 for n in calls.values())


async def test_activation_loads_missing_together_and_evicts():
    now = [0.0]
    loads = []

    async def loader(tenants):
        loads.append(sorted(tenants))
        return {t: {"tenant": t} for t in tenants}

    table = ActivationTable(loader, idle_seconds=10, max_tenants=3, clock=lambda: now[0])
    found = await table.activate(["a", "b", "a"])
    assert found == {"a": {"tenant": "a"}, "b": {"tenant": "b"}} and loads == [["a", "b"]]
    await table.activate(["a"])
    assert loads == [["a", "b"]], "active tenants are not reloaded"
    await table.activate(["c", "d"])
    assert "b" not in table and "a" in table and len(table) == 3, "least recently used leaves first"
    now[0] = 11
    await table.activate(["e"])
    assert list(table._states) == ["e"] and table.evictions == 4
    assert table.peek("a") is None


async def test_a_tenant_evicted_while_another_activation_loads_is_loaded_again():
    now = [0.0]
    gate, loads = asyncio.Event(), []

    async def loader(tenants):
        loads.append(sorted(tenants))
        if "slow" in tenants:
            await gate.wait()
        return {t: {"tenant": t, "load": len(loads)} for t in tenants}

    table = ActivationTable(loader, idle_seconds=10, clock=lambda: now[0])
    await table.activate(["x"])
    now[0] = 11  # x is idle now
    both = asyncio.ensure_future(table.activate(["x", "slow"]))  # x present: only "slow" loads
    await asyncio.sleep(0)
    await table.activate(["other"])  # finishes first, and its eviction drops idle x
    assert "x" not in table
    gate.set()
    found = await both
    assert sorted(found) == ["slow", "x"] and loads[-1] == ["x"]  # x read again from storage


async def test_turns_serialise_a_tenant_but_not_others():
    turns = TenantTurns()
    order = []

    async def op(tenant, name, delay):
        async with turns.turn(tenant):
            order.append(f"{name}+")
            await asyncio.sleep(delay)
            order.append(f"{name}-")

    await asyncio.gather(op("a", "a1", 0.05), op("a", "a2", 0.0), op("b", "b1", 0.01))
    assert order.index("a1-") < order.index("a2+"), "same tenant: one at a time"
    assert order.index("b1+") < order.index("a1-"), "other tenants proceed meanwhile"
    assert turns.active() == 0


def test_rendezvous_is_stable_uniform_and_moves_little():
    tenants = [f"tenant-{i}" for i in range(4000)]
    four = {t: shard_for(t, 4) for t in tenants}
    assert four == {t: shard_for(t, 4) for t in tenants}
    counts = collections.Counter(four.values())
    assert min(counts.values()) > 800
    five = {t: shard_for(t, 5) for t in tenants}
    moved = [t for t in tenants if four[t] != five[t]]
    assert all(five[t] == 4 for t in moved), "growing only moves tenants to the new shard"
    assert 0.1 < len(moved) / len(tenants) < 0.3
    with pytest.raises(ValueError):
        shard_for("t", 0)


def test_get_or_create_is_safe_under_racing_creators(ray_session):
    ray = ray_session

    @ray.remote(num_cpus=0)
    class Probe:
        def __init__(self):
            import uuid

            self.id = uuid.uuid4().hex

        def ident(self):
            return self.id

    handles = []

    def create():
        handles.append(get_or_create(Probe, "race-probe", 0))

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    idents = {ray.get(h.ident.remote()) for h in handles}
    assert len(idents) == 1, "every racer got the same actor"
    assert ray.get_actor(shard_name("race-probe", 0), namespace=NAMESPACE)
    assert kill_all("race-probe", 2) == 1


async def test_run_many_answers_each_operation_alone():
    from actors.substrate.operations import ActorError, run_many

    class Core:
        async def ok(self, tenant, x):
            return {"tenant": tenant, "x": x}

        async def refuse(self, tenant):
            raise ActorError(402, "budget_exceeded", "no", remaining=0)

        async def hidden(self, tenant):
            return "never"

    answers = await run_many(Core(), {"ok", "refuse"}, [("ok", "a", (1,)), ("refuse", "b", ()), ("hidden", "c", ())])
    assert answers[0] == {"ok": {"tenant": "a", "x": 1}}
    assert answers[1] == {"error": {"status": 402, "code": "budget_exceeded", "message": "no", "details": {"remaining": 0}}}
    assert answers[2]["error"]["code"] == "unknown_operation" and answers[2]["error"]["status"] == 400


async def test_in_flight_tenants_are_not_evicted():
    from actors.substrate.activation import InFlight

    async def load(tenants):
        return {t: object() for t in tenants}

    in_flight = InFlight()
    table = ActivationTable(load, idle_seconds=-1, busy=in_flight.__contains__)
    with in_flight.hold("a"):
        with in_flight.hold("a"):
            await table.activate(["a", "b"])
            assert "a" in in_flight and "a" in table and "b" not in table  # idle b left, busy a stayed
        assert "a" in in_flight and "b" not in in_flight
    assert "a" not in in_flight
    table.evict()
    assert "a" not in table


async def test_group_commit_undoes_a_refused_batch_and_commits_the_others_alone():
    """One tenant's unstorable write fails only its own operation: the batch is undone newest
    first, and run_many runs each operation again in a transaction of its own."""
    from actors.substrate.group_commit import GroupCommit
    from actors.substrate.operations import ActorError, run_many

    stored: list[str] = []
    batches: list[list[str]] = []
    memory: list[str] = []

    async def write(pending):
        batches.append([item.writes for item in pending])
        await asyncio.sleep(0.001)
        if any(item.writes == "bad" for item in pending):
            raise ValueError("the database refuses 'bad'")
        stored.extend(item.writes for item in pending)

    commits = GroupCommit(write, ActorError)

    class Core:
        async def put(self, tenant, value):
            memory.append(value)
            await commits.commit(tenant, value, lambda: memory.remove(value))
            return value

    calls = [("put", f"t{i}", (f"v{i}",)) for i in range(20)] + [("put", "evil", ("bad",))]
    answers = await run_many(Core(), {"put"}, calls)
    assert [a["ok"] for a in answers[:20]] == [f"v{i}" for i in range(20)]
    assert answers[20]["error"]["status"] == 422 and answers[20]["error"]["code"] == "value_not_storable"
    assert sorted(stored) == sorted(f"v{i}" for i in range(20)) and "bad" not in memory
    assert sorted(memory) == sorted(stored), "what was undone is exactly what was not stored"
    assert commits.isolations >= 1 and any(len(b) > 1 and "bad" in b for b in batches)
    assert not commits.in_flight.__contains__("evil")
