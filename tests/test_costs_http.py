"""The cost ledger over HTTP with real Ray actors, real sockets and both databases."""
from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
import ray

from actors.ledger.prices import NANOS, default_catalog
from actors.substrate.placement import NAMESPACE, shard_name
from serve_app.client import AsyncClient, RaytenantError, async_pool
from storage.models import BudgetRow, UsageRow
from tests.http_support import assert_error, refused, stored
from tests.wsutil import connect, recv, recv_until

pytestmark = pytest.mark.integration

MODEL = "gpt-4o-mini"


def cost(inp: int, out: int, cached: int = 0, model: str = MODEL) -> int:
    return default_catalog().lookup(model).cost_nanos(inp, out, cached)


async def test_usage_single_batch_and_idempotency(live, tenant, db_url):
    async with live.client(tenant) as rt:
        one = await rt.costs.record({"model": MODEL, "input_tokens": 1000, "output_tokens": 200, "agent": "mapper",
                                     "flow_id": "f1", "idempotency_key": "call-1"})
        assert one["cost"] == cost(1000, 200) / NANOS and one["duplicate"] is False
        await refused(rt.costs.record({"model": MODEL, "input_tokens": 10, "output_tokens": 10,
                                       "idempotency_key": "call-1"}), 409, "idempotency_mismatch")
        body = await rt.costs.record([
            {"model": MODEL, "input_tokens": 1000, "output_tokens": 200, "agent": "mapper", "flow_id": "f1",
             "idempotency_key": "call-1"},
            {"model": "openai/" + MODEL, "input_tokens": 2000, "output_tokens": 0, "cached_tokens": 1000},
        ])
        assert body["records"][0] == {**one, "duplicate": True}
        assert body["records"][1]["cost"] == cost(2000, 0, 1000) / NANOS
        assert body["total_cost"] == body["records"][1]["cost"]
        retried = await asyncio.gather(*(rt.costs.record({
            "model": MODEL, "input_tokens": 5, "output_tokens": 5, "idempotency_key": "call-2"}) for _ in range(10)))
        assert sum(not r["duplicate"] for r in retried) == 1
    rows = await stored(db_url, UsageRow, tenant)
    assert len(rows) == 3 and sorted(str(r["idempotency_key"]) for r in rows) == ["None", "call-1", "call-2"]
    assert {r["agent"] for r in rows} == {"mapper", None}


BAD_USAGE = [
    ({"model": MODEL, "input_tokens": -1, "output_tokens": 1}, 422, "invalid_tokens"),
    ({"model": MODEL, "input_tokens": 1.5, "output_tokens": 1}, 422, "invalid_tokens"),
    ({"model": MODEL, "input_tokens": "10", "output_tokens": 1}, 422, "invalid_tokens"),
    ({"model": MODEL, "input_tokens": True, "output_tokens": 1}, 422, "invalid_tokens"),
    ({"model": MODEL, "input_tokens": 1}, 422, "invalid_tokens"),
    ({"model": MODEL, "input_tokens": 1, "output_tokens": 1, "cached_tokens": 2}, 422, "invalid_tokens"),
    ({"model": "", "input_tokens": 1, "output_tokens": 1}, 422, "invalid_model"),
    ({"model": "gpt-imaginary-9", "input_tokens": 1, "output_tokens": 1}, 422, "unknown_model"),
    ({"model": MODEL, "input_tokens": 1, "output_tokens": 1, "agent": 7}, 422, "invalid_field"),
    ({"records": []}, 422, "invalid_records"),
    ({"records": [{"model": MODEL, "input_tokens": 1, "output_tokens": 1}, 3]}, 422, "invalid_body"),
    ({"records": [{"model": MODEL, "input_tokens": 1, "output_tokens": 1, "idempotency_key": "d"}] * 2}, 422,
     "duplicate_idempotency_key"),
    ([1, 2], 422, "invalid_body"),
    ("text", 422, "invalid_body"),
]


async def test_bad_input_changes_nothing(live, tenant, db_url):
    auth = live.auth(tenant)
    async with (live.client(tenant) as rt, live.client(tenant, scopes=["costs:write"]) as writer,
                httpx.AsyncClient(base_url=live.url) as client):
        for body, status, code in BAD_USAGE:
            assert_error(await client.post("/v1/costs/usage", headers=auth, json=body), status, code)
        assert_error(await client.post("/v1/costs/usage", headers=auth, content=b"{nope"), 400, "malformed_json")
        for budget, code in (({"monthly_budget": 0}, "invalid_budget"), ({"monthly_budget": -5}, "invalid_budget"),
                             ({}, "invalid_budget"), ({"monthly_budget": "10"}, "invalid_budget"),
                             ({"monthly_budget": 10, "alert_threshold": 0}, "invalid_threshold"),
                             ({"monthly_budget": 10, "alert_threshold": 1.01}, "invalid_threshold")):
            assert_error(await client.put("/v1/costs/budget", headers=live.admin_auth(tenant), json=budget), 422, code)
        await refused(rt.costs.budget(), 404, "budget_not_set")
        reservation = {"model": MODEL, "estimated_input_tokens": 10, "estimated_output_tokens": -1}
        assert_error(await client.post("/v1/costs/reservations", headers=auth, json=reservation), 422, "invalid_tokens")
        reservation = {"model": MODEL, "estimated_input_tokens": 10, "estimated_output_tokens": 1, "ttl_seconds": 0}
        assert_error(await client.post("/v1/costs/reservations", headers=auth, json=reservation), 422, "invalid_ttl_seconds")
        await refused(rt.costs.settle("abc", 1, 1), 404, "reservation_not_found")
        await refused(rt.costs.settle("a-b", 1, 1), 404, "reservation_not_found")
        await refused(rt.costs.release("abc"), 404, "reservation_not_found")
        assert_error(await client.get("/v1/costs/summary?start=yesterday", headers=auth), 422, "invalid_parameter")
        await refused(rt.costs.summary("2026-02-01", "2026-01-01"), 422, "invalid_parameter")
        await refused(rt.costs.estimate(MODEL, tokens=-3), 422, "invalid_tokens")
        await refused(rt.costs.estimate("nope-9", tokens=3), 422, "unknown_model")
        for body, code in (({"quality_requirement": 2}, "invalid_quality_requirement"),
                           ({"cost_constraint": 0}, "invalid_cost_constraint"), ({"task_type": ""}, "invalid_task_type")):
            assert_error(await client.post("/v1/costs/select-model", headers=auth, json=body), 422, code)
        assert_error(await client.get("/v1/costs/prices?limit=0", headers=auth), 422, "invalid_parameter")
        operator = live.operator_auth()
        prices = f"/v1/admin/tenants/{tenant}/prices/mine"
        assert_error(await client.put(prices, headers=operator, json={"input_per_token": 1e-6}), 422, "invalid_price")
        assert_error(await client.put(prices, headers=operator, json={"input_per_token": -1, "output_per_token": 0}),
                     422, "invalid_price")
        await refused(rt.admin.delete_price(tenant, "mine"), 404, "override_not_found")
        reader = live.auth(tenant, scopes=["costs:read"])  # the scope is checked before the (bad) body
        assert_error(await client.post("/v1/costs/usage", headers=reader, json=BAD_USAGE[0][0]), 403, "forbidden")
        await refused(writer.costs.set_budget(1), 403, "forbidden")
        assert_error(await client.get("/v1/costs/summary"), 401, "missing_token")
    assert await stored(db_url, UsageRow, tenant) == []
    assert await stored(db_url, BudgetRow, tenant) == []


async def test_500_concurrent_reservations_against_a_budget_for_100(live, tenant, db_url):
    one = cost(10_000, 2_000)
    async with async_pool(connections=200) as http, live.client(tenant, scopes=["*"]) as admin, \
            AsyncClient(live.url, live.token(tenant), http=http) as rt:
        put = await admin.costs.set_budget(100 * one / NANOS, 0.9)
        assert put["remaining"] == 100 * one / NANOS
        answers = await asyncio.gather(*(rt.costs.reserve(MODEL, 10_000, 2_000) for _ in range(500)),
                                       return_exceptions=True)
        accepted = [a for a in answers if isinstance(a, dict)]
        denied = [a for a in answers if isinstance(a, RaytenantError) and a.status == 402]
        others = [repr(a)[:300] for a in answers if not isinstance(a, dict) and a not in denied]
        assert len(accepted) == 100 and len(denied) == 400, others[:3]
        assert denied[0].code == "budget_exceeded" and denied[0].details["remaining"] == 0.0
        settled = await asyncio.gather(*(rt.costs.settle(a["reservation_id"], 10_000, 2_000, agent="a")
                                         for a in accepted[:60]))
        assert all(s["released"] == 0 for s in settled)
        released = await asyncio.gather(*(rt.costs.release(a["reservation_id"]) for a in accepted[60:]))
        assert all(r["state"] == "released" for r in released)
        await refused(rt.costs.release(accepted[-1]["reservation_id"]), 409, "reservation_closed")
        budget = await rt.costs.budget()
    assert budget["used"] == 60 * one / NANOS and budget["reserved"] == 0
    rows = await stored(db_url, BudgetRow, tenant)
    assert rows[0]["used_nanos"] == 60 * one and rows[0]["reserved_nanos"] == 0
    assert rows[0]["used_nanos"] <= rows[0]["amount_nanos"]
    assert len(await stored(db_url, UsageRow, tenant)) == 60


async def test_budget_alert_streams_once(live, tenant):
    ws = await connect(live.ws_url, live.token(tenant))
    assert (await recv(ws))["type"] == "connection_established"
    one = cost(1000, 1000)
    async with live.client(tenant) as rt, live.client(tenant, scopes=["*"]) as admin:
        put = await admin.costs.set_budget(4 * one / NANOS, 0.5)
        assert put["alert_threshold"] == 0.5 and put["used"] == 0
        for _ in range(4):
            await rt.costs.record({"model": MODEL, "input_tokens": 1000, "output_tokens": 1000})
        await refused(rt.costs.record({"model": MODEL, "input_tokens": 1000, "output_tokens": 1000}), 402,
                      "budget_exceeded")
        alert = (await recv_until(ws, lambda m: m["type"] == "budget_alert"))[-1]
        assert alert["data"]["utilization"] == 0.5 and alert["seq"] >= 1 and alert["flow_id"] is None
        replay = await rt.events.replay()
    assert [e["type"] for e in replay["events"]] == ["budget_alert"]
    await ws.close()


async def test_summary_recommendations_estimate_prices(live, tenant):
    async with live.client(tenant) as rt:
        records = [{"model": "gpt-4o", "input_tokens": 100, "output_tokens": 50, "agent": f"a{i % 2}", "flow_id": "f"}
                   for i in range(10)]
        await rt.costs.record(records)
        summary = await rt.costs.summary()
        expected = 10 * cost(100, 50, model="gpt-4o")
        assert summary["total_cost"] == expected / NANOS and summary["total_requests"] == 10
        assert summary["by_agent"]["a0"]["requests"] == 5 and summary["by_flow"]["f"]["tokens"] == 1500
        old = await rt.costs.summary("2020-01-01", "2020-02-01T00:00:00Z")
        assert old["total_requests"] == 0
        advice = await rt.costs.recommendations()
        assert advice["window_days"] == 30 and isinstance(advice["recommendations"], list)
        estimate = await rt.costs.estimate("gpt-4o", tokens=1000)  # the original's total, split 2:1
        assert (estimate["input_tokens"], estimate["output_tokens"]) == (670, 330)
        assert estimate["total_cost"] == cost(670, 330, model="gpt-4o") / NANOS
        choice = await rt.costs.select_model("complex", quality_requirement=0.9)
        assert choice["meets_quality"] and choice["quality"] >= 0.9 and choice["reason"]
        prices = (await rt.costs.prices("gpt-4o-mini", limit=5))["prices"]
        assert prices[0]["model"] == "gpt-4o-mini" and prices[0]["source"] == "catalog"
        put = await rt.admin.set_price(tenant, "acme/house-model", 1e-6, 2e-6)
        assert put["model"] == "acme/house-model"
        used = await rt.costs.record({"model": "acme/house-model", "input_tokens": 1000, "output_tokens": 1000})
        assert used["cost"] == 0.003
        assert await rt.admin.delete_price(tenant, "acme/house-model") is None  # 204
        await refused(rt.costs.record({"model": "acme/house-model", "input_tokens": 1, "output_tokens": 1}), 422,
                      "unknown_model")


async def test_tenants_are_isolated(live, tenant):
    other = f"t-{uuid.uuid4().hex[:12]}"
    async with live.client(tenant) as rt, live.client(other) as theirs:
        rid = (await rt.costs.reserve(MODEL, 1, 1))["reservation_id"]
        await refused(theirs.costs.settle(rid, 1, 1), 404, "reservation_not_found")
        await rt.costs.record({"model": MODEL, "input_tokens": 1, "output_tokens": 1})
        assert (await theirs.costs.summary())["total_requests"] == 0


async def test_ledger_shard_killed_under_load_loses_and_doubles_nothing(live, tenant, db_url):
    """Writers retry with the same idempotency key until acknowledged; the shard is killed mid-way.
    Every acknowledged key is stored exactly once and the budget's usage equals the stored sum."""
    one = cost(100, 100)
    acknowledged: dict[str, float] = {}
    unavailable = 0

    async with live.client(tenant) as rt, live.client(tenant, scopes=["*"]) as admin:
        await admin.costs.set_budget(1000.0, 1.0)

        async def writer(w: int) -> None:
            nonlocal unavailable
            for i in range(40):
                key = f"w{w}-{i}"
                while True:
                    try:
                        answer = await rt.costs.record({"model": MODEL, "input_tokens": 100, "output_tokens": 100,
                                                        "idempotency_key": key})
                    except RaytenantError as error:
                        assert (error.status, error.code) == (503, "ledger_unavailable"), error
                        unavailable += 1
                        await asyncio.sleep(0.05)
                        continue
                    acknowledged[key] = answer["cost"]
                    break

        writers = [asyncio.create_task(writer(w)) for w in range(8)]
        while len(acknowledged) < 60:
            await asyncio.sleep(0.01)
        ledger = live.runtime.ledger
        ray.kill(ray.get_actor(shard_name(ledger.kind, ledger.shard_of(tenant)), namespace=NAMESPACE), no_restart=False)
        await asyncio.wait_for(asyncio.gather(*writers), 120)
        budget = await rt.costs.budget()
    rows = await stored(db_url, UsageRow, tenant)
    keys = [r["idempotency_key"] for r in rows]
    assert len(keys) == len(set(keys)) == 320 == len(acknowledged)
    assert set(keys) == set(acknowledged)
    assert budget["used"] == 320 * one / NANOS
    assert (await stored(db_url, BudgetRow, tenant))[0]["used_nanos"] == sum(r["cost_nanos"] for r in rows)
