"""FlowRunnerCore in this process (its Ray shell is a few lines), against the real ledger,
learning, mailbox and hub actors and both databases: resume, cancel, limits and failures."""
from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timezone

import pytest

from actors.substrate.limits import Limits
from actors.flows.options import FlowOptions
from actors.flows.core import FlowError, FlowRunnerCore, Services
from actors.substrate.metrics import RecordingSink
from serve_app.schemas.flows import parse_flow_request
from crews.samples import sample_inventory
from storage.engine import create_engine
from storage.flows import ACTIVE, FlowStore

pytestmark = pytest.mark.integration
SAMPLE = sample_inventory()


@pytest.fixture
async def runner(live, db_url):
    engine = create_engine(db_url)
    runtime = live.runtime
    services = Services(hub=runtime.hub, ledger=runtime.ledger, learning=runtime.learning, mailbox=runtime.mailbox)
    made = []

    def make(**options) -> FlowRunnerCore:
        core = FlowRunnerCore(FlowStore(engine), services, FlowOptions(kind=f"inproc-{uuid.uuid4().hex[:8]}", **options),
                              metrics=RecordingSink())
        made.append(core)
        return core

    yield make
    for core in made:
        for run in list(core.runs.values()):
            run.stop.set()
        await asyncio.gather(*(r.task for r in core.runs.values() if r.task), return_exceptions=True)
        core.executor.shutdown(wait=False)
    await engine.dispose()


def spec(**changes):
    return parse_flow_request({"name": "inventory", "data": SAMPLE["data"], "target_schema": SAMPLE["target_schema"],
                               **changes})


async def finished(core: FlowRunnerCore, tenant: str, flow_id: str, timeout: float = 60) -> dict:
    for _ in range(int(timeout / 0.1)):
        flow = await core.get(tenant, flow_id)
        if flow["status"] not in ACTIVE:
            return flow
        await asyncio.sleep(0.1)
    raise AssertionError(f"flow did not end: {flow}")


async def test_a_flow_runs_to_completion_and_is_measured(runner, tenant):
    core = runner()
    await core.resume()
    flow = await core.create(tenant, spec(kind="optimization"))
    done = await finished(core, tenant, flow["flow_id"])
    assert done["status"] == "completed" and done["progress"] == 100 and done["attempts"] == 1
    assert done["results"]["cost_optimization"]["totals"]["current_monthly"] == 23650.0
    assert [f["flow_id"] for f in await core.list(tenant)] == [flow["flow_id"]]
    assert await core.list(tenant, "failed") == []
    stats = await core.stats()
    assert stats["completed"] == 1 and set(stats["mean_phase_seconds"]) == {"migration_strategy", "cost_optimization",
                                                                            "timeline_planning"}
    assert core.metrics.total("raytenant_flows_finished", status="completed") == 1
    assert [r[1] for r in core.metrics.records].count("raytenant_flow_phase_seconds") == 3


async def test_resume_runs_only_the_phases_not_stored(runner, tenant, db_url):
    first = runner()
    await first.resume()
    flow = await first.create(tenant, spec())
    flow_id = flow["flow_id"]
    # Let it finish its first phase, then stop it the way a dying runner would (its task gone).
    for _ in range(200):
        if "data_validation" in first.runs[flow_id].context.results:
            break
        await asyncio.sleep(0.02)
    run = first.runs[flow_id]
    run.task.cancel()
    run.stop.set()
    await asyncio.gather(run.task, return_exceptions=True)
    stored = await first.store.get(tenant, flow_id)
    assert stored["status"] == "running" and "data_validation" in stored["results"]
    second = FlowRunnerCore(first.store, first.services, first.options, metrics=RecordingSink())
    try:
        assert await second.resume() == 1
        assert await second.resume() == 0  # already running here
        done = await finished(second, tenant, flow_id)
    finally:
        second.executor.shutdown(wait=False)
    assert done["status"] == "completed" and done["attempts"] == 2
    assert set(done["results"]) == set(flow["phases"])
    assert done["results"]["data_validation"] == stored["results"]["data_validation"]  # not recomputed
    other = FlowRunnerCore(first.store, first.services, FlowOptions(kind="someone-else"))
    try:
        assert await other.resume() == 0  # another deployment's runner leaves it alone
    finally:
        other.executor.shutdown(wait=False)


async def test_a_flow_whose_phases_all_finished_is_only_completed_on_resume(runner, tenant):
    core = runner()
    now = datetime.now(timezone.utc)
    results = {p: {"summary": p} for p in ("migration_strategy", "cost_optimization", "timeline_planning")}
    await core.store.create({
        "id": uuid.uuid4().hex, "tenant": tenant, "runner": core.options.kind, "name": "n", "kind": "optimization",
        "process": "sequential", "status": "running", "phase": "timeline_planning", "progress": 100,
        "input": {"data": {"r": [{"a": 1}]}}, "results": results, "error": None, "attempts": 1, "created_at": now,
        "updated_at": now, "started_at": now, "finished_at": None,
    })
    assert await core.resume() == 1
    [flow] = await core.list(tenant)
    done = await finished(core, tenant, flow["flow_id"])
    assert done["status"] == "completed" and done["attempts"] == 1


async def test_cancel_limit_and_refusals(runner, tenant):
    core = runner(limits=Limits(running_flows=2, queued_flows=1), llm_latency=0.2)
    await core.resume()
    a = await core.create(tenant, spec())
    b = await core.create(tenant, spec(kind="optimization"))
    c = await core.create(tenant, spec(kind="optimization"))  # over the running limit: queued
    assert c["status"] == "queued" and c["flow_id"] in core.queued and c["flow_id"] not in core.runs
    with pytest.raises(FlowError) as refused:  # over the queue limit: refused
        await core.create(tenant, spec())
    assert refused.value.status == 429 and refused.value.code == "quota_exceeded"
    assert refused.value.details["limit"] == "queued_flows" and refused.value.details["queued"] == 1
    cancelled = await core.cancel(tenant, a["flow_id"])
    assert cancelled["status"] == "cancelled"
    with pytest.raises(FlowError) as again:
        await core.cancel(tenant, a["flow_id"])
    assert again.value.code == "flow_finished"
    with pytest.raises(FlowError) as missing:
        await core.get(tenant, uuid.uuid4().hex)
    assert missing.value.status == 404
    with pytest.raises(FlowError) as early:
        await core.correct(tenant, b["flow_id"], [{"source_field": "os", "target_field": "os"}])
    assert early.value.code == "no_mapping"
    await finished(core, tenant, b["flow_id"])
    assert (await finished(core, tenant, c["flow_id"]))["status"] == "completed"  # a's slot went to c
    for _ in range(100):
        if a["flow_id"] not in core.runs:
            break
        await asyncio.sleep(0.05)
    assert (await core.get(tenant, a["flow_id"]))["status"] == "cancelled" and a["flow_id"] not in core.runs
    assert core.metrics.total("raytenant_flows_finished", status="cancelled") == 1
    assert core.metrics.total("raytenant_limit_refusals", limit="queued_flows") == 1


async def test_concurrent_creates_respect_the_running_and_queue_limits(runner, tenant):
    core = runner(limits=Limits(running_flows=2, queued_flows=2), llm_latency=0.05)
    await core.resume()
    outcomes = await asyncio.gather(*(core.create(tenant, spec(kind="optimization")) for _ in range(6)),
                                    return_exceptions=True)
    made = [o for o in outcomes if isinstance(o, dict)]
    refused = [o for o in outcomes if isinstance(o, FlowError)]
    assert len(made) == 4 and len(refused) == 2 and {e.status for e in refused} == {429}
    assert sorted(f["status"] for f in made) == ["initialized", "initialized", "queued", "queued"]
    assert len(await core.list(tenant)) == 4 and not core.creating and not core.queuing
    other = await core.create(tenant + "-other", spec(kind="optimization"))  # another tenant has its own limit
    assert other["status"] == "initialized"
    for who, flow in [(tenant, f) for f in made] + [(tenant + "-other", other)]:
        assert (await finished(core, who, flow["flow_id"]))["status"] == "completed"


async def test_a_queued_flow_of_another_tenant_waits_for_one_flow_at_most(runner, tenant):
    """Two runner slots; the aggressor queues 12 flows, then a victim queues one. The victim's
    flow takes the next free slot: it waits for at most one flow's run, not for the backlog."""
    core = runner(limits=Limits(running_flows=20, queued_flows=50), threads=2, llm_latency=0.1)
    await core.resume()
    aggressor, victim = tenant + "-aggr", tenant + "-victim"
    flows = [await core.create(aggressor, spec(kind="optimization")) for _ in range(12)]
    assert [f["status"] for f in flows].count("queued") == 10
    mine = await core.create(victim, spec(kind="optimization"))
    assert mine["status"] == "queued"
    done = await finished(core, victim, mine["flow_id"])
    ends = sorted([(await finished(core, aggressor, f["flow_id"])) for f in flows], key=lambda f: f["started_at"])
    started = done["started_at"]
    # Started before every queued flow of the aggressor, right after the first running one ended.
    assert started <= ends[2]["started_at"], (started, [f["started_at"] for f in ends])
    first_end = min(f["finished_at"] for f in ends[:2])
    assert started >= first_end


async def test_flow_weight_shares_the_slots(runner, tenant):
    """One slot; two backlogged tenants, weights 3 and 1: the heavier starts three of every four."""
    heavy, light = tenant + "-heavy", tenant + "-light"
    core = runner(limits=Limits(running_flows=10, queued_flows=50), threads=1, llm_latency=0.0)
    await core.resume()
    core.limits.put(heavy, {"flow_weight": 3})
    blocker = await core.create(tenant, spec(kind="optimization"))  # holds the slot while both queue
    heavy_flows = []
    for _ in range(6):
        heavy_flows.append(await core.create(heavy, spec(kind="optimization")))
        await core.create(light, spec(kind="optimization"))
    await finished(core, tenant, blocker["flow_id"])
    runs = []
    for who in (heavy, light):
        for flow in await core.list(who):
            runs.append(await finished(core, who, flow["flow_id"]))
    order = sorted(runs, key=lambda f: f["started_at"])
    tenants = [heavy if any(f["flow_id"] == g["flow_id"] for g in heavy_flows) else light for f in order[:8]]
    assert tenants.count(heavy) == 6 and tenants.count(light) == 2, tenants


async def test_concurrent_corrections_of_a_finished_flow_are_all_kept(runner, tenant):
    core = runner()
    await core.resume()
    done = await finished(core, tenant, (await core.create(tenant, spec()))["flow_id"])
    mapping = done["results"]["field_mapping"]
    unmapped, free = mapping["unmapped_source_fields"], mapping["unmapped_target_fields"]
    assert len(unmapped) >= 2 and len(free) >= 2
    # two fields get a target, three others are said to have no counterpart, all at once
    pairs = list(zip(unmapped, free))[:2] + [(m["source_field"], None) for m in mapping["mappings"][:3]]
    await asyncio.gather(*(core.correct(tenant, done["flow_id"], [{"source_field": s, "target_field": t}])
                           for s, t in pairs))
    stored = (await core.get(tenant, done["flow_id"]))["results"]["field_mapping"]
    mapped = {m["source_field"]: m["target_field"] for m in stored["mappings"]}
    assert all(mapped.get(s) == t for s, t in pairs), mapped
    assert stored["no_counterpart"] == [s for s, t in pairs if t is None]
    assert not core.correcting.active()


async def test_budget_and_validation_failures(runner, tenant, live):
    core = runner()
    await core.resume()
    sparse = spec(data={"rows": [{"a": None, "b": ""}, {"a": None, "b": None}, {"a": 1, "b": None}]})
    bad = await finished(core, tenant, (await core.create(tenant, sparse))["flow_id"])
    assert bad["status"] == "failed" and bad["error"]["reason"] == "validation_failed"
    await live.runtime.ledger.call("set_budget", tenant, 0.002, 1.0)
    poor = await finished(core, tenant, (await core.create(tenant, spec()))["flow_id"])
    assert poor["status"] == "failed" and poor["error"]["reason"] == "budget_exceeded"
    assert core.metrics.total("raytenant_flows_finished", status="failed") == 2


async def events_of(core: FlowRunnerCore, tenant: str, flow_id: str) -> list[dict]:
    read = await core.services.hub.read(tenant, 0, flow_ids=[flow_id])
    return [e if isinstance(e, dict) else e.to_message() for e in read["events"]]


async def gone(core: FlowRunnerCore, flow_id: str) -> None:
    for _ in range(200):
        if flow_id not in core.runs:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the run did not stop")


async def test_a_flow_leaves_the_active_states_once(runner, tenant):
    core = runner(llm_latency=0.05)
    await core.resume()
    # Cancelled before its run started: it never becomes running.
    early = await core.create(tenant, spec(kind="optimization"))
    assert (await core.cancel(tenant, early["flow_id"]))["status"] == "cancelled"
    await gone(core, early["flow_id"])
    stored = await core.get(tenant, early["flow_id"])
    assert stored["status"] == "cancelled" and stored["results"] == {}
    statuses = [e["data"]["status"] for e in await events_of(core, tenant, early["flow_id"]) if e["type"] == "flow_update"]
    assert statuses[-1] == "cancelled" and "completed" not in statuses
    # Ended by another writer mid-run (a cancel through another runner generation): the crew stops
    # at its next phase boundary and writes nothing more.
    flow = await core.create(tenant, spec())
    flow_id = flow["flow_id"]
    for _ in range(400):
        if core.runs[flow_id].phase == "application_discovery":
            break
        await asyncio.sleep(0.01)
    assert await core.store.update(flow_id, status="cancelled")
    await gone(core, flow_id)
    after = await core.get(tenant, flow_id)
    assert after["status"] == "cancelled" and "risk_assessment" not in after["results"]
    assert not any(e["type"] in ("flow_completed", "error_notification") for e in await events_of(core, tenant, flow_id))
    # A finished flow cannot be cancelled, and the store refuses to move it again.
    done = await finished(core, tenant, (await core.create(tenant, spec(kind="optimization")))["flow_id"])
    with pytest.raises(FlowError) as late:
        await core.cancel(tenant, done["flow_id"])
    assert late.value.status == 409 and late.value.details == {"flow_status": "completed"}
    assert not await core.store.update(done["flow_id"], status="running")
    assert (await core.get(tenant, done["flow_id"]))["status"] == "completed"


async def test_a_flow_started_too_often_fails_instead_of_looping(runner, tenant):
    core = runner(max_attempts=2)
    now = datetime.now(timezone.utc)
    flow_id = uuid.uuid4().hex
    await core.store.create({
        "id": flow_id, "tenant": tenant, "runner": core.options.kind, "name": "n", "kind": "optimization",
        "process": "sequential", "status": "running", "phase": "cost_optimization", "progress": 33,
        "input": {"data": {"r": [{"a": 1}]}}, "results": {}, "error": None, "attempts": 2, "created_at": now,
        "updated_at": now, "started_at": now, "finished_at": None,
    })
    assert await core.resume() == 0 and flow_id not in core.runs
    failed = await core.get(tenant, flow_id)
    assert failed["status"] == "failed" and failed["error"]["reason"] == "too_many_attempts"
    assert failed["error"]["phase"] == "cost_optimization"
    events = await events_of(core, tenant, flow_id)
    assert [e["type"] for e in events] == ["error_notification", "flow_update"]
    assert events[-1]["data"]["status"] == "failed"
    assert core.metrics.total("raytenant_flows_finished", status="failed") == 1


async def test_a_sweep_during_create_leaves_the_new_flow_to_it(runner, tenant):
    """`create` stores the flow, streams `initialized`, then starts it. A sweep (`resume`) that
    reads storage in between must not start it too: the flow would run twice, interleaved."""
    core = runner()
    await core.resume()
    announced, release = asyncio.Event(), asyncio.Event()
    real = core._notifier

    class SlowNotifier:
        def __init__(self, tenant_: str) -> None:
            self.inner = real(tenant_)

        async def send_flow_update(self, flow_id, data):
            if data.get("status") == "initialized":
                announced.set()
                await release.wait()
            return await self.inner.send_flow_update(flow_id, data)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    core._notifier = SlowNotifier
    creating = asyncio.create_task(core.create(tenant, spec(kind="optimization")))
    await asyncio.wait_for(announced.wait(), 30)
    assert await core.resume() == 0  # stored, not yet started: create's to start
    release.set()
    flow = await creating
    done = await finished(core, tenant, flow["flow_id"])
    assert done["status"] == "completed" and done["attempts"] == 1
    assert core.counters["started"] == 1 and core.counters["resumed"] == 0
