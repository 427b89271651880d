"""Every agent learns from the tenant (issue 15 parts 1, 2 and 6), end to end: real Ray (runner,
learning, ledger, mailbox, hub), real crews on the OfflineLLM, both databases. A finished phase is
learned as successes; a correction of any phase (`{phase, item, corrected}`) is learned and
changes the stored result and the next similar flow; a recommendation that was applied gets
feedback; another tenant is untouched; a restarted learning shard still knows it all."""
from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import ray

from actors.substrate.placement import NAMESPACE, shard_name
from serve_app.client import AsyncClient, RaytenantError
from serve_app.runtime import Runtime
from tests.conftest import LiveServer, settings_for
from tests.http_support import LATENCY, SAMPLE, assert_error, flow_body, wait_flow

pytestmark = pytest.mark.integration
RECORDS = SAMPLE["data"]["inventory"]
DUPLICATED = {"inventory": RECORDS + RECORDS[:1]}  # a duplicate record: an issue to accept


@pytest.fixture
async def flows(ray_session, db_url, backend):
    # The same deployment (actor prefix and options) as tests/test_flows_http.py: its actors are reused.
    settings = settings_for(db_url, backend, actor_prefix=f"test-{backend}-fl-", flow_limit=3, llm_latency=LATENCY)
    async with LiveServer(Runtime(settings)) as server:
        yield server


async def run_flow(rt: AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    flow = await wait_flow(rt, (await rt.flows.create(**body))["flow_id"], timeout=120)
    assert flow["status"] == "completed", flow
    return flow


def by_app(rows: list[dict], key: str = "application") -> dict[str, dict]:
    return {r[key]: r for r in rows}


async def test_every_phase_learns_from_corrections_and_the_next_flow_applies_them(flows, tenant, backend):
    auth, other = flows.auth(tenant), flows.auth(f"{tenant}-other")
    async with flows.client(tenant) as rt, flows.client(f"{tenant}-other") as rt_other, \
            httpx.AsyncClient(base_url=flows.url, timeout=30) as client:
        first = await run_flow(rt, flow_body(data=DUPLICATED))
        stats = await rt.learning.stats()
        assert stats["successes"] > 0 and stats["corrections"] == 0  # finished phases were learned as successes
        results = first["results"]
        assert "inventory.hostname" not in results["data_validation"]["pii_columns"]
        assert "crm" not in results["application_discovery"]["legacy_applications"]
        assert by_app(results["risk_assessment"]["applications"])["hr-payroll"]["level"] != "critical"
        issue = results["data_validation"]["issues"][0]
        issue_id = f"{issue['dataset']}.{issue.get('column') or '*'}:{issue['issue']}"
        answer = await rt.flows.correct(first["flow_id"], [
            {"phase": "data_validation", "item": "inventory.hostname", "corrected": {"personal_data": True}},
            {"phase": "data_validation", "item": issue_id, "corrected": {"accepted": True}},
            {"phase": "application_discovery", "item": "crm", "corrected": {"legacy": True}},
            {"phase": "application_discovery", "item": "crm->identity", "corrected": {"dependency": "external"}},
            {"phase": "risk_assessment", "item": "hr-payroll", "corrected": {"level": "critical"}},
        ])
        assert len(answer["corrected"]) == 5 and len(answer["learned"]) == 5 and answer["feedback"] == []
        mapped = await client.post(f"/v1/flows/{first['flow_id']}/corrections", headers=auth, json={
            "phase": "field_mapping", "item": "storage_gb", "corrected": {"target_field": "disk_gb"}})
        assert mapped.status_code == 200, mapped.text
        stored = (await rt.flows.get(first["flow_id"]))["results"]
        assert "inventory.hostname" in stored["data_validation"]["pii_columns"]
        assert "crm" in stored["application_discovery"]["legacy_applications"]
        assert by_app(stored["risk_assessment"]["applications"])["hr-payroll"]["level"] == "critical"
        assert stored["risk_assessment"]["corrections"][0]["was"] != "critical"
        # The next flow on similar data applies every correction, and says so.
        second = (await run_flow(rt, flow_body(name="Second import", data=DUPLICATED)))["results"]
        assert "inventory.hostname" in second["data_validation"]["pii_columns"]
        assert next(i for i in second["data_validation"]["issues"]
                    if f"{i['dataset']}.{i.get('column') or '*'}:{i['issue']}" == issue_id).get("accepted") is True
        crm = by_app(second["application_discovery"]["applications"], "name")["crm"]
        assert crm["legacy"] and "identity" in crm["external_dependencies"]
        assert by_app(second["risk_assessment"]["applications"])["hr-payroll"]["level"] == "critical"
        assert {m["source_field"]: m["target_field"] for m in second["field_mapping"]["mappings"]}["storage_gb"] == "disk_gb"
        for phase in ("data_validation", "application_discovery", "risk_assessment"):
            assert second[phase]["learned"] and all(a["pattern_id"] for a in second[phase]["learned"]), phase
        events = (await rt.events.replay(limit=1000))["events"]
        started = [e["data"]["insight"] for e in events if e["type"] == "agent_insight"
                   and e["data"]["insight"]["type"] == "phase_started"]
        assert any(s["phase"] == "risk_assessment" and s["recommendations"] >= 1 for s in started)

        # Optimisation: strategy, cost and timeline corrections.
        optimised = await run_flow(rt, flow_body(kind="optimization"))
        plan = optimised["results"]
        assert by_app(plan["migration_strategy"]["strategies"])["hr-payroll"]["strategy"] != "retire"
        ledger = by_app(plan["cost_optimization"]["applications"])["ledger-db"]
        crm_row = by_app(plan["timeline_planning"]["schedule"])["crm"]
        planned = crm_row["end_week"] - crm_row["start_week"]
        answer = await rt.flows.correct(optimised["flow_id"], [
            {"phase": "migration_strategy", "item": "hr-payroll", "corrected": {"strategy": "retire"}},
            {"phase": "cost_optimization", "item": "ledger-db", "corrected": {"target_monthly": ledger["current_monthly"] / 2}},
            {"phase": "timeline_planning", "item": "crm", "corrected": {"weeks": round(planned * 2, 1)}},
            {"phase": "timeline_planning", "item": "crm", "corrected": {"wave": 5}},
            {"phase": "cost_optimization", "item": "engineer_week", "corrected": {"rate": 5200}},
        ])
        stored = (await rt.flows.get(optimised["flow_id"]))["results"]
        assert by_app(stored["cost_optimization"]["applications"])["ledger-db"]["target_monthly"] == pytest.approx(
            ledger["current_monthly"] / 2, abs=0.01)
        # A corrected unit rate prices this plan again and every later plan of the tenant.
        assert plan["cost_optimization"]["rates"]["engineer_week"] == 4000
        assert stored["cost_optimization"]["rates"]["engineer_week"] == 5200
        assert all(r["migration_cost"] == round(r["effort_weeks"] * 5200, 2)
                   for r in stored["cost_optimization"]["applications"])
        assert by_app(stored["timeline_planning"]["schedule"])["crm"]["wave"] >= 5
        # A restarted learning shard reloads what it learned from the database.
        shard = ray.get_actor(shard_name(f"test-{backend}-fl-learning", 0), namespace=NAMESPACE)
        ray.kill(shard, no_restart=False)
        for _ in range(300):  # back once it answers again (a flow meanwhile runs on its rules alone)
            try:
                await rt.learning.stats()
                break
            except RaytenantError:
                await asyncio.sleep(0.1)
        again = await run_flow(rt, flow_body(kind="optimization", name="Next plan"))
        plan = again["results"]
        assert by_app(plan["migration_strategy"]["strategies"])["hr-payroll"]["strategy"] == "retire"
        assert plan["cost_optimization"]["target_factors"]["ledger-db"] == 0.5  # (and alike applications: their share)
        assert plan["cost_optimization"]["rates"]["engineer_week"] == 5200
        assert plan["cost_optimization"]["unit_rates"] == {"engineer_week": 5200}
        assert by_app(plan["cost_optimization"]["applications"])["ledger-db"]["target_monthly"] == pytest.approx(
            ledger["current_monthly"] / 2, abs=0.01)
        row = by_app(plan["timeline_planning"]["schedule"])["crm"]
        assert row["wave"] >= 5 and row["end_week"] - row["start_week"] == pytest.approx(planned * 2, abs=0.25)
        # Overruling an applied recommendation is feedback against its pattern.
        overruled = await rt.flows.correct(again["flow_id"], [
            {"phase": "migration_strategy", "item": "hr-payroll", "corrected": {"strategy": "repurchase"}}])
        assert overruled["feedback"] and overruled["feedback"][0]["accepted"] is False
        assert overruled["feedback"][0]["confidence"] < 0.95

        # Another tenant's flows are untouched.
        theirs = (await run_flow(rt_other, flow_body(kind="optimization")))["results"]
        assert by_app(theirs["migration_strategy"]["strategies"])["hr-payroll"]["strategy"] != "retire"
        assert all(not theirs[p]["learned"] for p in theirs)

        # Bad corrections are refused and change nothing.
        before = (await rt.flows.get(again["flow_id"]))["results"]
        for body, status, code in (
                ({"phase": "nope", "item": "crm", "corrected": {"strategy": "retire"}}, 422, "unknown_phase"),
                ({"phase": "migration_strategy", "item": "nope", "corrected": {"strategy": "retire"}}, 422, "unknown_item"),
                ({"phase": "migration_strategy", "item": "crm", "corrected": {"strategy": "teleport"}}, 422,
                 "invalid_correction"),
                ({"phase": "cost_optimization", "item": "crm", "corrected": {"target_monthly": -1}}, 422,
                 "invalid_correction"),
                ({"phase": "cost_optimization", "item": "engineer_week", "corrected": {"rate": -5}}, 422,
                 "invalid_correction"),
                ({"phase": "cost_optimization", "item": "gold_month", "corrected": {"rate": 1}}, 422, "unknown_item"),
                ({"phase": "risk_assessment", "item": "crm", "corrected": {"level": "high"}}, 409, "phase_not_finished"),
                ({"phase": "migration_strategy", "item": "crm"}, 422, "invalid_correction")):
            assert_error(await client.post(f"/v1/flows/{again['flow_id']}/corrections", headers=auth, json=body),
                         status, code)
        assert (await rt.flows.get(again["flow_id"]))["results"] == before
        assert (await client.post(f"/v1/flows/{again['flow_id']}/corrections", headers=other, json={
            "phase": "migration_strategy", "item": "crm", "corrected": {"strategy": "retire"}})).status_code == 404
