"""Budget levels over HTTP against the real shards: who may set them, the engagement and user a call
is charged to come from the token, a level refuses reservations and gateway calls all or nothing,
RPM limits answer 429 with Retry-After before the provider is called, alerts stream."""
from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import httpx
import openai
import pytest

from serve_app.runtime import Runtime
from storage.models import BudgetLevelRow, ReservationRow
from tests.conftest import LiveServer, settings_for
from tests.http_support import assert_error, stored
from tests.http_support import MODEL
from tests.wsutil import connect, recv, recv_until

pytestmark = pytest.mark.integration
WRITER = ["costs:read", "costs:write", "llm:call"]


async def test_levels_are_set_by_costs_admin_and_bind_the_tokens_claims(live, tenant, db_url):
    admin = live.auth(tenant, scopes=["costs:admin", "costs:read"])
    alice = live.auth(tenant, user="alice", engagement="acme-audit", scopes=WRITER)
    bob = live.auth(tenant, user="bob", engagement="acme-audit", scopes=WRITER)
    path = "/v1/costs/budgets/engagement/acme-audit"
    async with httpx.AsyncClient(base_url=live.url) as client:
        assert_error(await client.put(path, headers=live.auth(tenant), json={"amount": 1}), 403, "forbidden")
        for body, code in (({"amount": -1}, "invalid_budget"), ({"amount": 1, "period": "week"}, "invalid_period"),
                           ({"amount": 1, "mode": "x"}, "invalid_mode"), ({"rpm": 1.5}, "invalid_limit"),
                           ({"amount": 1, "thresholds": [2]}, "invalid_threshold"), ([], "invalid_body")):
            assert_error(await client.put(path, headers=admin, json=body), 422, code)
        assert_error(await client.put("/v1/costs/budgets/team/x", headers=admin, json={"amount": 1}), 404, "level_not_found")
        assert_error(await client.put("/v1/costs/budgets/tenant/other", headers=admin, json={"amount": 1}), 404,
                     "level_not_found")
        assert (await client.get("/v1/costs/budgets", headers=admin)).json() == {"levels": []}  # nothing was written
        put = await client.put(path, headers=admin, json={"amount": 0.001, "period": "day"})
        assert put.status_code == 200 and put.json()["remaining"] == 0.001 and put.json()["period"] == "day"
        await client.put("/v1/costs/budgets/user/bob", headers=admin, json={"amount": 1, "mode": "soft"})
        # gpt-4o-mini: 0.15 / 0.6 USD per million tokens; 1000 + 1000 tokens = $0.00075.
        first = await client.post("/v1/costs/reservations", headers=alice,
                                  json={"model": MODEL, "input_tokens": 1000, "max_output_tokens": 1000, "agent": "mapper"})
        assert first.status_code == 201, first.text
        refused = await client.post("/v1/costs/reservations", headers=bob,
                                    json={"model": MODEL, "input_tokens": 1000, "max_output_tokens": 1000})
        assert_error(refused, 402, "budget_exceeded")
        assert refused.json()["error"]["level"] == {"scope": "engagement", "key": "acme-audit"}
        levels = {(v["scope"], v["key"]): v for v in (await client.get("/v1/costs/budgets", headers=admin)).json()["levels"]}
        assert levels[("engagement", "acme-audit")]["reserved"] == 0.00075
        assert levels[("user", "bob")]["reserved"] == 0  # the refused call holds nothing anywhere
        settled = await client.post(f"/v1/costs/reservations/{first.json()['reservation_id']}/settle", headers=alice,
                                    json={"input_tokens": 1000, "output_tokens": 100})
        assert settled.status_code == 201
        summary = (await client.get("/v1/costs/summary", headers=alice)).json()
        assert set(summary["by_engagement"]) == {"acme-audit"} and set(summary["by_user"]) == {"alice"}
        one = (await client.get(path, headers=alice)).json()
        assert one["used"] == 0.00021 and one["reserved"] == 0
        assert_error(await client.delete(path, headers=alice), 403, "forbidden")
        assert (await client.delete(path, headers=admin)).status_code == 200
        assert_error(await client.get(path, headers=admin), 404, "level_not_found")
    assert [r["key"] for r in await stored(db_url, BudgetLevelRow, tenant)] == ["bob"]
    assert {(r["engagement"], r["user_id"], r["agent"]) for r in await stored(db_url, ReservationRow, tenant)} == {
        ("acme-audit", "alice", "mapper")}


async def test_a_level_alert_streams_once_per_threshold(live, tenant):
    ws = await connect(live.ws_url, live.token(tenant))
    assert (await recv(ws))["type"] == "connection_established"
    carol = live.auth(tenant, user="carol", scopes=WRITER)
    async with httpx.AsyncClient(base_url=live.url) as client:
        await client.put("/v1/costs/budgets/user/carol", headers=live.admin_auth(tenant),
                         json={"amount": 0.001, "mode": "soft", "thresholds": [0.5, 1.0]})
        for _ in range(3):  # $0.00075 each: 75 %, 150 %, 225 % -- soft: never refused
            used = await client.post("/v1/costs/usage", headers=carol,
                                     json={"model": MODEL, "input_tokens": 1000, "output_tokens": 1000})
            assert used.status_code == 201
        alerts = await recv_until(ws, lambda m: m["type"] == "budget_alert" and m["data"].get("threshold") == 1.0)
    got = [m["data"]["threshold"] for m in alerts if m["type"] == "budget_alert"]
    assert got == [0.5, 1.0] and alerts[-1]["data"]["level"] == {"scope": "user", "key": "carol"}
    await ws.close()


async def test_gateway_calls_are_held_to_agent_rpm_and_user_budgets(gateway, provider, tenant):  # noqa: F811
    admin = {"Authorization": f"Bearer {gateway.token(tenant, scopes=['costs:admin'])}"}
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        assert (await http.put("/v1/costs/budgets/agent/support-bot", headers=admin, json={"rpm": 1})).status_code == 200
        assert (await http.put("/v1/costs/budgets/user/dave", headers=admin, json={"amount": 1e-9})).status_code == 200

    def client(user: str, agent: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{gateway.url}/v1/llm", max_retries=0,
                                  api_key=gateway.token(tenant, user=user, scopes=WRITER),
                                  default_headers={"X-Raytenant-Agent": agent})

    ask = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    await client("erin", "support-bot").chat.completions.create(**ask)
    calls = len(provider.provider.requests)
    with pytest.raises(openai.RateLimitError) as limited:
        await client("erin", "support-bot").chat.completions.create(**ask)
    body = limited.value.response.json()["error"]
    assert (body["code"], body["limit"], body["level"]) == ("rate_limited", "rpm", {"scope": "agent", "key": "support-bot"})
    assert 1 <= int(limited.value.response.headers["retry-after"]) <= 60
    with pytest.raises(openai.APIStatusError) as poor:
        await client("dave", "other-bot").chat.completions.create(**ask)
    assert poor.value.status_code == 402 and poor.value.response.json()["error"]["level"]["key"] == "dave"
    assert len(provider.provider.requests) == calls  # neither refused call reached the provider
    await client("erin", "other-bot").chat.completions.create(**ask)  # another agent has its own window


async def test_levels_hold_across_three_ingress_replicas(live, tenant, db_url, backend):
    """Three ingress replicas (each its own ledger client) share one tenant's levels: the RPM and
    the budget admit exactly their limit, not three times it (LiteLLM's per-replica counters)."""
    admin = live.auth(tenant, scopes=["costs:admin", "costs:read"])
    frank = live.auth(tenant, user="frank", scopes=WRITER)
    body = {"model": MODEL, "input_tokens": 1000, "max_output_tokens": 1000}  # $0.00075 each
    async with AsyncExitStack() as stack, httpx.AsyncClient() as client:
        others = [await stack.enter_async_context(LiveServer(Runtime(settings_for(db_url, backend)))) for _ in range(2)]
        urls = [live.url] + [o.url for o in others]
        await client.put(f"{live.url}/v1/costs/budgets/agent/crawler", headers=admin, json={"rpm": 7})
        await client.put(f"{live.url}/v1/costs/budgets/user/frank", headers=admin, json={"amount": 0.00075 * 4})
        crawled = await asyncio.gather(*(client.post(f"{urls[i % 3]}/v1/costs/reservations", headers=frank,
                                                     json={**body, "input_tokens": 1, "max_output_tokens": 1,
                                                           "agent": "crawler"}) for i in range(30)))
        assert sorted(r.status_code for r in crawled) == [201] * 7 + [429] * 23
        spent = await asyncio.gather(*(client.post(f"{urls[i % 3]}/v1/costs/reservations", headers=frank, json=body)
                                       for i in range(30)))
        assert sum(r.status_code == 201 for r in spent) == 3  # 4 fit the user, the crawler's 7 tiny calls hold a little
        assert {r.json()["error"]["code"] for r in spent if r.status_code != 201} == {"budget_exceeded"}
        view = (await client.get(f"{others[1].url}/v1/costs/budgets/user/frank", headers=admin)).json()
    assert view["reserved"] <= 0.003 and view["remaining"] >= 0
