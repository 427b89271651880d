"""Budget levels over HTTP against the real shards: who may set them, the engagement and user a call
is charged to come from the token, a level refuses reservations and gateway calls all or nothing,
RPM limits answer 429 with Retry-After before the provider is called, alerts stream."""
from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import httpx
import openai
import pytest

from serve_app.client import AsyncClient, RaytenantError
from serve_app.runtime import Runtime
from storage.models import BudgetLevelRow, ReservationRow
from tests.conftest import LiveServer, settings_for
from tests.http_support import MODEL, assert_error, refused, stored
from tests.wsutil import connect, recv, recv_until

pytestmark = pytest.mark.integration
WRITER = ["costs:read", "costs:write", "llm:call"]


async def test_levels_are_set_by_costs_admin_and_bind_the_tokens_claims(live, tenant, db_url):
    scopes = ["costs:admin", "costs:read"]
    admin_auth = live.auth(tenant, scopes=scopes)
    path = "/v1/costs/budgets/engagement/acme-audit"
    async with (live.client(tenant, scopes=scopes) as admin, live.client(tenant) as default,
                live.client(tenant, user="alice", engagement="acme-audit", scopes=WRITER) as alice,
                live.client(tenant, user="bob", engagement="acme-audit", scopes=WRITER) as bob,
                httpx.AsyncClient(base_url=live.url) as client):
        await refused(default.costs.set_level("engagement", "acme-audit", amount=1), 403, "forbidden")
        for body, code in (({"amount": -1}, "invalid_budget"), ({"amount": 1, "period": "week"}, "invalid_period"),
                           ({"amount": 1, "mode": "x"}, "invalid_mode"), ({"rpm": 1.5}, "invalid_limit"),
                           ({"amount": 1, "thresholds": [2]}, "invalid_threshold"), ([], "invalid_body")):
            assert_error(await client.put(path, headers=admin_auth, json=body), 422, code)
        # "team" is no scope the client's set_level takes: a raw request.
        assert_error(await client.put("/v1/costs/budgets/team/x", headers=admin_auth, json={"amount": 1}), 404,
                     "level_not_found")
        await refused(admin.costs.set_level("tenant", "other", amount=1), 404, "level_not_found")
        assert await admin.costs.levels() == {"levels": []}  # nothing was written
        put = await admin.costs.set_level("engagement", "acme-audit", amount=0.001, period="day")
        assert put["remaining"] == 0.001 and put["period"] == "day"
        await admin.costs.set_level("user", "bob", amount=1, mode="soft")
        # gpt-4o-mini: 0.15 / 0.6 USD per million tokens; 1000 + 1000 tokens = $0.00075.
        first = await alice.costs.reserve(MODEL, 1000, 1000, agent="mapper")
        error = await refused(bob.costs.reserve(MODEL, 1000, 1000), 402, "budget_exceeded")
        assert error.details["level"] == {"scope": "engagement", "key": "acme-audit"}
        levels = {(v["scope"], v["key"]): v for v in (await admin.costs.levels())["levels"]}
        assert levels[("engagement", "acme-audit")]["reserved"] == 0.00075
        assert levels[("user", "bob")]["reserved"] == 0  # the refused call holds nothing anywhere
        await alice.costs.settle(first["reservation_id"], 1000, 100)
        summary = await alice.costs.summary()
        assert set(summary["by_engagement"]) == {"acme-audit"} and set(summary["by_user"]) == {"alice"}
        one = await alice.costs.level("engagement", "acme-audit")
        assert one["used"] == 0.00021 and one["reserved"] == 0
        await refused(alice.costs.delete_level("engagement", "acme-audit"), 403, "forbidden")
        deleted = await admin.costs.delete_level("engagement", "acme-audit")
        assert deleted == {"deleted": {"scope": "engagement", "key": "acme-audit"}}
        await refused(admin.costs.level("engagement", "acme-audit"), 404, "level_not_found")
    assert [r["key"] for r in await stored(db_url, BudgetLevelRow, tenant)] == ["bob"]
    assert {(r["engagement"], r["user_id"], r["agent"]) for r in await stored(db_url, ReservationRow, tenant)} == {
        ("acme-audit", "alice", "mapper")}


async def test_a_level_alert_streams_once_per_threshold(live, tenant):
    ws = await connect(live.ws_url, live.token(tenant))
    assert (await recv(ws))["type"] == "connection_established"
    async with live.client(tenant, scopes=["*"]) as admin, live.client(tenant, user="carol", scopes=WRITER) as carol:
        await admin.costs.set_level("user", "carol", amount=0.001, mode="soft", thresholds=[0.5, 1.0])
        for _ in range(3):  # $0.00075 each: 75 %, 150 %, 225 % -- soft: never refused
            await carol.costs.record({"model": MODEL, "input_tokens": 1000, "output_tokens": 1000})
        alerts = await recv_until(ws, lambda m: m["type"] == "budget_alert" and m["data"].get("threshold") == 1.0)
    got = [m["data"]["threshold"] for m in alerts if m["type"] == "budget_alert"]
    assert got == [0.5, 1.0] and alerts[-1]["data"]["level"] == {"scope": "user", "key": "carol"}
    await ws.close()


async def test_gateway_calls_are_held_to_agent_rpm_and_user_budgets(gateway, provider, tenant):
    async with gateway.client(tenant, scopes=["costs:admin"]) as admin:
        await admin.costs.set_level("agent", "support-bot", rpm=1)
        await admin.costs.set_level("user", "dave", amount=1e-9)

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
    admin = live.token(tenant, scopes=["costs:admin", "costs:read"])
    frank = live.token(tenant, user="frank", scopes=WRITER)
    async with AsyncExitStack() as stack:
        others = [await stack.enter_async_context(LiveServer(Runtime(settings_for(db_url, backend)))) for _ in range(2)]
        [here, *there] = [await stack.enter_async_context(AsyncClient(s.url, admin)) for s in [live, *others]]
        replicas = [await stack.enter_async_context(AsyncClient(s.url, frank)) for s in [live, *others]]
        await here.costs.set_level("agent", "crawler", rpm=7)
        await here.costs.set_level("user", "frank", amount=0.00075 * 4)
        crawled = await asyncio.gather(*(replicas[i % 3].costs.reserve(MODEL, 1, 1, agent="crawler")
                                         for i in range(30)), return_exceptions=True)
        limited = [r.status for r in crawled if isinstance(r, RaytenantError)]
        assert sum(isinstance(r, dict) for r in crawled) == 7 and limited == [429] * 23
        spent = await asyncio.gather(*(replicas[i % 3].costs.reserve(MODEL, 1000, 1000)  # $0.00075 each
                                       for i in range(30)), return_exceptions=True)
        assert sum(isinstance(r, dict) for r in spent) == 3  # 4 fit the user, the crawler's 7 tiny calls hold a little
        assert {r.code for r in spent if not isinstance(r, dict)} == {"budget_exceeded"}
        view = await there[1].costs.level("user", "frank")
    assert view["reserved"] <= 0.003 and view["remaining"] >= 0
