"""Flows end to end: real Ray (FlowRunner, ledger, learning, mailbox, hub shards), real sockets,
real crewai crews on the OfflineLLM, both databases."""
from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import ray

from actors.substrate.placement import NAMESPACE, shard_name
from tests.conftest import LiveServer
from tests.http_support import assert_error, flow_body, refused, wait_flow
from tests.wsutil import connect, recv, recv_until

pytestmark = pytest.mark.integration
DISCOVERY = ["data_validation", "application_discovery", "field_mapping", "risk_assessment"]
OPTIMIZATION = ["migration_strategy", "cost_optimization", "timeline_planning"]
async def subscribed(server: LiveServer, tenant: str):
    """A WebSocket of the tenant subscribed to all its flows."""
    ws = await connect(server.ws_url, server.token(tenant))
    await recv(ws)
    await ws.send(json.dumps({"type": "subscribe_flow", "flow_id": "*"}))
    await recv(ws)
    return ws


def of_flow(messages: list[dict], flow_id: str) -> list[dict]:
    return [m for m in messages if m.get("flow_id") == flow_id]


async def test_discovery_flow_streams_its_phases_in_order(flows, tenant):
    auth = flows.auth(tenant)
    ws = await subscribed(flows, tenant)
    async with flows.client(tenant) as rt, httpx.AsyncClient(base_url=flows.url, timeout=30) as client:
        created = await client.post("/v1/flows", headers=auth, json=flow_body(process="hierarchical"))
        assert created.status_code == 202, created.text
        flow_id = created.json()["flow_id"]
        assert created.headers["location"] == f"/v1/flows/{flow_id}"
        assert created.json()["status"] == "initialized" and created.json()["phases"] == DISCOVERY
        seen = await recv_until(ws, lambda m: m["type"] == "flow_completed", timeout=90)
        flow = await wait_flow(rt, flow_id)
        listed = (await rt.flows.list())["flows"]
        summary = await rt.costs.summary()
    await ws.close()
    events = of_flow(seen, flow_id)
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    insights = [(e["data"]["insight"]["type"], e["data"]["insight"]["phase"]) for e in events if e["type"] == "agent_insight"]
    assert insights == [(kind, phase) for phase in DISCOVERY for kind in ("phase_started", "phase_completed")]
    updates = [e["data"] for e in events if e["type"] == "flow_update"]
    assert [u["status"] for u in updates] == ["initialized", "running"] + ["running"] * 4 + ["completed"]
    assert [u["progress"] for u in updates] == [0, 0, 25, 50, 75, 100, 100]
    completed = events[-1]
    assert completed["type"] == "flow_completed" and set(completed["data"]["results"]["phases"]) == set(DISCOVERY)
    assert "11 application(s)" in completed["data"]["results"]["phases"]["application_discovery"]
    # The handoffs went through the mailbox: one agent_message per phase boundary.
    handoffs = [m for m in seen if m["type"] == "agent_message" and m["data"].get("correlation_id") == flow_id]
    assert len(handoffs) == 3
    assert flow["status"] == "completed" and flow["progress"] == 100 and flow["attempts"] == 1
    results = flow["results"]
    assert results["data_validation"]["status"] == "passed"
    assert results["data_validation"]["pii_columns"] == ["inventory.owner_email"]
    assert results["application_discovery"]["application_count"] == 11
    assert results["field_mapping"]["mappings"] and results["risk_assessment"]["applications"]
    assert results["application_discovery"]["handoffs"][0]["phase"] == "data_validation"
    assert all(r.get("computed_by") is None for r in results.values())  # every fact came from a tool call
    assert [f["flow_id"] for f in listed][:1] == [flow_id] and "results" not in listed[0]
    # Every LLM call was metered to this flow, the manager's included.
    assert summary["by_flow"][flow_id]["requests"] >= 10
    assert "manager" in summary["by_agent"] and "field_mapping" in summary["by_agent"]


async def test_optimisation_flow_and_corrections_teach_learning(flows, tenant):
    auth = flows.auth(tenant)
    async with flows.client(tenant) as rt, httpx.AsyncClient(base_url=flows.url, timeout=30) as client:
        created = await rt.flows.create(**flow_body(kind="optimization"))
        discovery = await rt.flows.create(**flow_body())
        optimised = await wait_flow(rt, created["flow_id"])
        flow = await wait_flow(rt, discovery["flow_id"])
        assert optimised["status"] == "completed" and set(optimised["results"]) == set(OPTIMIZATION)
        timeline = optimised["results"]["timeline_planning"]
        assert timeline["critical_path"][0] == "ledger-db" and timeline["total_weeks"] > 0
        assert optimised["results"]["migration_strategy"]["counts"]["retain"] == 1
        mapping = {m["source_field"]: m["target_field"] for m in flow["results"]["field_mapping"]["mappings"]}
        assert "storage_gb" not in mapping  # the matcher alone does not see it
        flow_id = flow["flow_id"]
        body = await rt.flows.correct(flow_id, [{"source_field": "storage_gb", "target_field": "disk_gb"},
                                                {"source_field": "application", "target_field": mapping["application"]}])
        assert {"source_field": "storage_gb", "target_field": "disk_gb", "confidence": 1.0, "method": "user"} \
            in body["mapping"]["mappings"]
        assert "storage_gb" not in body["mapping"]["unmapped_source_fields"] and len(body["learned"]) == 2
        stored = await rt.flows.get(flow_id)
        assert stored["results"]["field_mapping"] == body["mapping"]
        # "No counterpart" unmaps a field, and is learned.
        assert mapping["technology"] == "tech_stack"
        unmapped = await client.post(f"/v1/flows/{flow_id}/corrections", headers=auth,
                                     json={"source_field": "technology", "target_field": None})
        assert unmapped.status_code == 200, unmapped.text
        assert "technology" in unmapped.json()["mapping"]["unmapped_source_fields"]
        assert unmapped.json()["learned"][0]["type"] == "correction"
        stored = await rt.flows.get(flow_id)
        # What was taught changes the next mapping of a similar schema.
        again = await rt.flows.create(**flow_body(name="Second import"))
        second = await wait_flow(rt, again["flow_id"])
        learned = {m["source_field"]: m for m in second["results"]["field_mapping"]["mappings"]}
        assert learned["storage_gb"]["target_field"] == "disk_gb" and learned["storage_gb"]["method"] != "matcher"
        assert "technology" not in learned and second["results"]["field_mapping"]["no_counterpart"] == ["technology"]
        assert second["results"]["field_mapping"]["recommendations_applied"] >= 1
        # Bad corrections change nothing.
        for payload, code in (({"source_field": "nope", "target_field": "host_name"}, "unknown_source_field"),
                              ({"source_field": "os", "target_field": "nope"}, "unknown_target_field"),
                              ({"source_field": "os"}, "invalid_correction"),
                              ({"corrections": []}, "invalid_body")):
            assert_error(await client.post(f"/v1/flows/{flow_id}/corrections", headers=auth, json=payload), 422, code)
        no_mapping = await client.post(f"/v1/flows/{optimised['flow_id']}/corrections", headers=auth,
                                       json={"source_field": "os", "target_field": "x"})
        assert_error(no_mapping, 409, "no_mapping")
        assert (await rt.flows.get(flow_id))["results"] == stored["results"]


async def test_runner_killed_mid_flow_resumes_after_last_finished_phase(flows, tenant, backend):
    ws = await subscribed(flows, tenant)
    async with flows.client(tenant) as rt:
        flow_id = (await rt.flows.create(**flow_body()))["flow_id"]
        await recv_until(ws, lambda m: m["type"] == "agent_insight" and m["data"]["insight"]["type"] == "phase_completed"
                         and m["data"]["insight"]["phase"] == "application_discovery", timeout=60)
        runner = ray.get_actor(shard_name(f"test-{backend}-fl-flows", 0), namespace=NAMESPACE)
        assert (await runner.stats.remote())["niceness"] == 10  # flows yield the CPU to requests
        ray.kill(runner, no_restart=False)
        seen = await recv_until(ws, lambda m: m["type"] == "flow_completed", timeout=120)
        flow = await wait_flow(rt, flow_id)
    await ws.close()
    assert flow["status"] == "completed" and flow["attempts"] == 2 and set(flow["results"]) == set(DISCOVERY)
    completed = [e["data"]["insight"]["phase"] for e in seen
                 if e["type"] == "agent_insight" and e["data"]["insight"]["type"] == "phase_completed"]
    # The finished phases were not run again; the interrupted one ran (again) to its end.
    assert "data_validation" not in completed and "application_discovery" not in completed
    assert completed[-2:] == ["field_mapping", "risk_assessment"]


async def test_budget_exhausted_mid_flow_fails_it_with_budget_exceeded(flows, tenant):
    async with flows.client(tenant) as rt, flows.client(tenant, scopes=["*"]) as admin:
        # A call reserves ~$0.0014 (its prompt + 2,048 output tokens) and settles ~$0.0002: a few
        # calls fit, the whole flow (10 calls) does not.
        await admin.costs.set_budget(0.002, alert_threshold=1)
        flow_id = (await rt.flows.create(**flow_body()))["flow_id"]
        flow = await wait_flow(rt, flow_id)
        # A failure is stored first and announced after (FlowRunnerCore._fail): the announcement
        # may land just after the status is read. Wait for it, bounded; then make sure of one.
        for _ in range(100):
            events = (await rt.events.replay())["events"]
            if any(e["type"] == "error_notification" for e in of_flow(events, flow_id)):
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        events = (await rt.events.replay())["events"]
        budget = await rt.costs.budget()
    assert flow["status"] == "failed" and flow["error"]["reason"] == "budget_exceeded"
    assert flow["error"]["phase"] in DISCOVERY and flow["progress"] < 100
    errors = [e for e in of_flow(events, flow_id) if e["type"] == "error_notification"]
    assert len(errors) == 1 and errors[0]["data"]["error"]["reason"] == "budget_exceeded"
    assert budget["used"] <= budget["monthly_budget"] and budget["reserved"] == 0


async def test_validation_failure_cancel_and_running_limit(flows, tenant):
    auth = flows.auth(tenant)
    sparse = {"rows": [{"a": None, "b": ""}, {"a": None, "b": None}, {"a": 1, "b": None}, {"a": None, "b": None}]}
    async with flows.client(tenant) as rt, httpx.AsyncClient(base_url=flows.url, timeout=30) as client:
        bad = await rt.flows.create(**flow_body(data=sparse, target_schema=None))
        failed = await wait_flow(rt, bad["flow_id"])
        assert failed["status"] == "failed" and failed["error"]["reason"] == "validation_failed"
        assert failed["error"]["phase"] == "data_validation" and list(failed["results"]) == ["data_validation"]

        await rt.admin.set_limits(tenant, {"queued_flows": 1})
        ids = []
        for _ in range(3):
            made = await client.post("/v1/flows", headers=auth, json=flow_body())
            assert made.status_code == 202 and made.json()["status"] == "initialized"
            ids.append(made.json()["flow_id"])
        queued = await client.post("/v1/flows", headers=auth, json=flow_body())  # over the running limit (3)
        assert queued.status_code == 202 and queued.json()["status"] == "queued"
        listed = (await rt.flows.list(status="queued"))["flows"]
        assert [f["flow_id"] for f in listed] == [queued.json()["flow_id"]]
        over = await client.post("/v1/flows", headers=auth, json=flow_body())  # over the queue limit (1)
        assert over.status_code == 429 and over.json()["error"]["code"] == "quota_exceeded"
        assert over.json()["error"]["limit"] == "queued_flows" and int(over.headers["Retry-After"]) >= 1
        ids.append(queued.json()["flow_id"])
        assert (await rt.flows.cancel(ids[0]))["status"] == "cancelled"
        for flow_id in ids:
            await wait_flow(rt, flow_id)
        assert (await rt.flows.get(ids[0]))["status"] == "cancelled"
        await refused(rt.flows.cancel(ids[0]), 409, "flow_finished")
        after = await client.post("/v1/flows", headers=auth, json=flow_body(kind="optimization"))
        assert after.status_code == 202  # room again once flows ended
        await wait_flow(rt, after.json()["flow_id"])
        statuses = {f["flow_id"]: f["status"] for f in (await rt.flows.list(status="completed"))["flows"]}
        assert ids[0] not in statuses and set(ids[1:]) <= set(statuses)


async def test_flow_bad_input_and_tenancy(flows, tenant):
    auth = flows.auth(tenant)
    async with flows.client(tenant) as rt, flows.client(tenant + "-b") as other, \
            flows.client(tenant, scopes=["flows:read"]) as reader, \
            httpx.AsyncClient(base_url=flows.url, timeout=30) as client:
        cases = [
            ([1, 2], "invalid_body"),
            ({"kind": "discovery", "data": [{"a": 1}]}, "invalid_name"),
            (flow_body(kind="parallel"), "invalid_kind"),
            (flow_body(process="parallel"), "invalid_process"),
            (flow_body(data=[]), "invalid_data"),
            (flow_body(data={"x": [1, 2]}), "invalid_data"),
            (flow_body(data=[{"a": 1}] * 10_001), "invalid_data"),
            (flow_body(target_schema={"fields": []}), "invalid_schema"),
            (flow_body(extra=1), "unknown_field"),
        ]
        for body, code in cases:
            response = await client.post("/v1/flows", headers=auth, json=body)
            assert response.status_code in (413, 422), (code, response.text)
            if response.status_code == 422:
                assert response.json()["error"]["code"] == code, response.text
        assert (await client.post("/v1/flows", headers=auth, content=b"{nope")).status_code == 400
        assert (await rt.flows.list())["flows"] == []
        for flow_id in ("zz", "0" * 32):
            await refused(rt.flows.get(flow_id), 404, "flow_not_found")
        assert (await client.get("/v1/flows?status=odd", headers=auth)).status_code == 422
        assert (await client.get("/v1/flows?limit=0", headers=auth)).status_code == 422
        # Another tenant's flow does not exist for this one.
        theirs = (await other.flows.create(**flow_body(kind="optimization")))["flow_id"]
        await refused(rt.flows.get(theirs), 404, "flow_not_found")
        await refused(rt.flows.cancel(theirs), 404, "flow_not_found")
        assert (await client.post("/v1/flows", json=flow_body())).status_code == 401
        await refused(reader.flows.create(**flow_body()), 403, "forbidden")
        await wait_flow(other, theirs)
