"""HTTP routes over real sockets: errors, tokens, replay pages, health."""
from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from serve_app.client import AsyncClient
from serve_app.runtime import Runtime
from tests.conftest import OPERATOR_TOKEN, LiveServer, settings_for
from tests.http_support import assert_error, refused

pytestmark = pytest.mark.integration


async def test_publish_validation_changes_nothing(live, tenant):
    auth = live.auth(tenant)
    async with httpx.AsyncClient(base_url=live.url) as client:
        assert_error(await client.post("/v1/events", content=b"{oops", headers=auth), 400, "malformed_json")
        assert_error(await client.post("/v1/events", json=[], headers=auth), 422, "invalid_events")
        assert_error(await client.post("/v1/events", json={"events": [1]}, headers=auth), 422, "invalid_events")
        assert_error(await client.post("/v1/events", json={"type": "nope"}, headers=auth), 422, "invalid_event_type")
        bad_flow = {"type": "flow_update", "flow_id": "x" * 129}
        assert_error(await client.post("/v1/events", json=bad_flow, headers=auth), 422, "invalid_flow_id")
        bad_data = {"type": "flow_update", "data": [1]}
        assert_error(await client.post("/v1/events", json=bad_data, headers=auth), 422, "invalid_data")
        many = {"events": [{"type": "flow_update"}] * 1001}
        assert_error(await client.post("/v1/events", json=many, headers=auth), 422, "too_many_events")
        huge = {"type": "flow_update", "data": {"x": "y" * (1024 * 1024)}}
        assert_error(await client.post("/v1/events", json=huge, headers=auth), 413, "payload_too_large")
        # One bad event in a batch rejects the whole batch.
        mixed = {"events": [{"type": "flow_update"}, {"type": "bogus"}]}
        assert_error(await client.post("/v1/events", json=mixed, headers=auth), 422, "invalid_event_type")
    async with live.client(tenant) as rt:
        assert await rt.events.replay() == {"events": [], "next_after": 0, "head": 0, "has_more": False}


async def test_auth_failures_and_scopes(live, tenant):
    async with httpx.AsyncClient(base_url=live.url) as client:
        assert_error(await client.get("/v1/events"), 401, "missing_token")
        assert_error(await client.get("/v1/events", headers={"Authorization": "Bearer junk"}), 401, "invalid_token")
        async with live.client(tenant, ttl=1, now=1_000_000) as expired:
            await refused(expired.events.replay(), 401, "token_expired")
        reader = live.token(tenant, scopes=["events:read"])
        async with AsyncClient(live.url, reader) as rt:
            await rt.events.replay()
            await refused(rt.events.publish({"type": "flow_update"}), 403, "forbidden")
        assert_error(await client.get("/nowhere"), 404, "not_found")
        assert_error(await client.delete("/v1/events", headers={"Authorization": f"Bearer {reader}"}), 405,
                     "method_not_allowed")


async def test_operator_mints_tenant_tokens(live, tenant):
    # `swapped` holds each token in the other's place.
    async with httpx.AsyncClient(base_url=live.url) as client, \
            AsyncClient(live.url, OPERATOR_TOKEN, operator_token=live.token(tenant)) as swapped:
        body = {"tenant": tenant, "user": "ann", "engagement": "e1", "scopes": ["events:read"], "ttl_seconds": 60}
        assert_error(await client.post("/v1/admin/tokens", json=body), 401, "operator_token_required")
        await refused(swapped.tokens.mint(tenant, user="ann", engagement="e1", scopes=["events:read"], ttl_seconds=60),
                      401, "operator_token_required")
        op = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
        for bad, code in [
            ({"tenant": "has space"}, "invalid_tenant"),
            ({"tenant": tenant, "scopes": "all"}, "invalid_scopes"),
            ({"tenant": tenant, "ttl_seconds": 0}, "invalid_ttl"),
            ({"tenant": tenant, "ttl_seconds": 30 * 86400 + 1}, "invalid_ttl"),  # over RAYTENANT_MAX_TOKEN_TTL
            ({"tenant": tenant, "user": 5}, "invalid_claims"),
            ([tenant], "invalid_body"),
        ]:
            assert_error(await client.post("/v1/admin/tokens", json=bad, headers=op), 422, code)
        minted = await client.post("/v1/admin/tokens", json=body, headers=op)  # raw: the test checks its 201
        assert minted.status_code == 201
        claims = live.runtime.tokens.verify(minted.json()["token"])
        assert (claims.tenant, claims.user, claims.engagement, claims.scopes) == (tenant, "ann", "e1", ("events:read",))
        # The operator token itself is not a tenant token.
        await refused(swapped.events.replay(), 401, "invalid_token")


async def test_replay_pages_and_flow_filter(live, tenant):
    async with live.client(tenant) as rt, httpx.AsyncClient(base_url=live.url) as client:
        await rt.events.publish([{"type": "flow_update", "flow_id": "a" if i % 2 else "b", "data": {"i": i}}
                                 for i in range(25)])
        seen, after = [], 0
        while True:
            page = await rt.events.replay(after, limit=10)
            seen += [e["seq"] for e in page["events"]]
            after = page["next_after"]
            if not page["has_more"]:
                break
        assert seen == list(range(1, 26))
        only_a = await rt.events.replay(flow_id="a", limit=100)
        assert [e["data"]["i"] for e in only_a["events"]] == list(range(1, 25, 2))
        auth = {"Authorization": f"Bearer {rt.token}"}
        for params in ({"after": "-1"}, {"limit": "0"}, {"limit": "1001"}, {"after": "x"}, {"flow_id": "y" * 200}):
            response = await client.get("/v1/events", params=params, headers=auth)
            assert response.status_code == 422 and response.json()["error"]["code"] in ("invalid_parameter", "invalid_flow_id")


async def test_expired_history_is_410(ray_session, db_url, backend, tenant):
    settings = settings_for(db_url, backend, hub_retention=5, actor_prefix=f"test-{backend}-short-")
    async with LiveServer(Runtime(settings)) as live, live.client(tenant) as rt:
        await rt.events.publish([{"type": "flow_update", "data": {"i": i}} for i in range(12)])
        expired = await refused(rt.events.replay(after=2), 410, "events_expired")
        assert expired.details["oldest_seq"] == 8
        ok = await rt.events.replay(after=7)
        assert [e["seq"] for e in ok["events"]] == [8, 9, 10, 11, 12]


async def test_health_and_readiness(live):
    async with httpx.AsyncClient(base_url=live.url) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready"


async def test_a_browser_passes_its_token_as_a_subprotocol(live, tenant):
    """`new WebSocket(url, ["raytenant", token])`: no token in the URL, which proxies log."""
    import websockets

    ws = await websockets.connect(live.ws_url, subprotocols=["raytenant", live.token(tenant)])
    assert ws.subprotocol == "raytenant"
    hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert hello["type"] == "connection_established" and hello["tenant"] == tenant
    await ws.close()
    refused = await websockets.connect(live.ws_url, subprotocols=["raytenant", "not-a-token"])
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(refused.recv(), 10)
    assert closed.value.rcvd.code == 4001
