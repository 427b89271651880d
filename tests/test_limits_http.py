"""Per-tenant quotas and rate limits over real HTTP and WebSockets against the real shards: the
operator sets them, a tenant over them is refused with 429 (or 4029 / an error on a socket) and
nothing changes, and another tenant is not touched."""
from __future__ import annotations

import asyncio

import httpx
import pytest
import websockets

from serve_app.rate_limits import EdgeRateLimits, serve_at_edge
from serve_app.runtime import Runtime
from storage.models import MessageRow, PatternRow
from tests.conftest import LiveServer, settings_for
from tests.http_support import assert_error, stored
from tests.wsutil import connect, recv, recv_until

pytestmark = pytest.mark.integration


def assert_limited(response: httpx.Response, code: str, limit: str) -> None:
    """A raw request's refusal over a limit, with its Retry-After header (which the client does not expose)."""
    assert_error(response, 429, code)
    assert response.json()["error"]["limit"] == limit and int(response.headers["Retry-After"]) >= 1


async def test_only_the_operator_sets_limits_and_bad_ones_change_nothing(live, tenant):
    path = f"/v1/admin/tenants/{tenant}/limits"
    async with live.client() as operator, httpx.AsyncClient(base_url=live.url) as client:
        assert_error(await client.put(path, headers=live.admin_auth(tenant), json={"connections": 1000000}),
                     401, "operator_token_required")
        for body in ({"connections": -1}, {"connections": "5"}, {"bogus": 1}, {"requests_per_second": {"events": 0}},
                     {"flow_weight": 1e9}, []):
            response = await client.put(path, headers=live.operator_auth(), json=body)
            assert response.status_code == 422, (body, response.text)
        view = await operator.admin.limits(tenant)
        assert "overrides" in view, view
        assert view["overrides"] == {} and view["limits"]["connections"] == live.runtime.settings.default_limits().connections
        changed = await operator.admin.set_limits(tenant, {"connections": 3, "requests_per_second": {"llm": 2}})
        assert changed["limits"]["connections"] == 3 and changed["limits"]["requests_per_second"]["llm"] == 2
        view = await operator.admin.limits(tenant)
        assert view["overrides"] == {"connections": 3, "requests_per_second": {"llm": 2}}
        assert view["limits"]["connections"] == 3 and view["usage"]["connections"] == 0
        await operator.admin.set_limits(tenant, {})  # an empty object: back to the defaults
        assert (await operator.admin.limits(tenant))["overrides"] == {}


async def test_a_tenant_over_its_request_rate_gets_429_and_others_do_not(live, tenant):
    other = tenant + "-other"
    leases_before = sum(s["leases"] for s in await live.runtime.quotas.stats())  # shards outlive a test
    async with (live.client(tenant) as rt, live.client(other) as theirs,
                httpx.AsyncClient(base_url=live.url) as client):
        await rt.admin.set_limits(tenant, {"requests_per_second": {"events": 5}})
        # raw: the refusals' Retry-After header is checked
        answers = await asyncio.gather(*(client.get("/v1/events", headers=live.auth(tenant)) for _ in range(40)))
        await asyncio.gather(*(theirs.events.replay() for _ in range(40)))  # none refused
        statuses = [r.status_code for r in answers]
        assert 5 <= statuses.count(200) <= 8 and statuses.count(429) == 40 - statuses.count(200), statuses
        assert_limited(next(r for r in answers if r.status_code == 429), "rate_limited", "requests:events")
        # Other route classes of the same tenant have their own buckets.
        await rt.costs.summary()  # not refused
        await asyncio.sleep(1.1)
        await rt.events.replay()  # refilled: not refused
    leases = sum(s["leases"] for s in await live.runtime.quotas.stats()) - leases_before
    assert leases < 40 + 40  # leased allotments: not one actor call per request


async def test_events_per_second_refuses_and_publishes_nothing(live, tenant):
    async with live.client(tenant) as rt, httpx.AsyncClient(base_url=live.url) as client:
        await rt.admin.set_limits(tenant, {"events_per_second": 10})
        events = [{"type": "agent_insight", "data": {"i": i}} for i in range(10)]
        await rt.events.publish(events)
        refused = await client.post("/v1/events", headers=live.auth(tenant), json={"events": events})
        assert_limited(refused, "rate_limited", "events_per_second")
        page = await rt.events.replay()
        assert page["head"] == 10


async def admitted_again(live, token: str, attempts: int = 50):
    """A socket of `token` admitted within `attempts` tries, 50 ms apart."""
    for _ in range(attempts):
        ws = await connect(live.ws_url, token)
        try:
            if (await recv(ws))["type"] == "connection_established":
                return ws
        except websockets.ConnectionClosed:
            await asyncio.sleep(0.05)
    raise AssertionError("the freed slot was not given again")


async def test_socket_over_the_connection_cap_closes_4029_and_subscriptions_are_capped(live, tenant):
    async with live.client() as operator:
        await operator.admin.set_limits(tenant, {"connections": 2, "subscriptions_per_socket": 2})
    token = live.token(tenant)
    first, second = await connect(live.ws_url, token), await connect(live.ws_url, token)
    for ws in (first, second):
        assert (await recv(ws))["type"] == "connection_established"
    third = await connect(live.ws_url, token)
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await recv(third)
    assert closed.value.rcvd.code == 4029
    other = await connect(live.ws_url, live.token(tenant + "-other"))  # another tenant is not capped by this one
    assert (await recv(other))["type"] == "connection_established"
    await second.close()
    fourth = await admitted_again(live, token)  # the slot is released when the server sees the close
    for flow in ("a", "b"):
        await first.send(f'{{"type": "subscribe_flow", "flow_id": "{flow}"}}')
        assert (await recv(first))["type"] == "subscription_confirmed"
    await first.send('{"type": "subscribe_flow", "flow_id": "c"}')
    error = await recv(first)
    assert error["type"] == "error" and error["code"] == "quota_exceeded" and error["limit"] == "subscriptions_per_socket"
    await first.send('{"type": "subscribe_flow", "flow_id": "a"}')  # a flow already held is no new subscription
    assert (await recv(first))["type"] == "subscription_confirmed"
    await first.send('{"type": "ping"}')
    assert (await recv_until(first, lambda m: m["type"] == "pong"))[-1]["type"] == "pong"  # the socket stays
    for ws in (first, fourth, other):
        await ws.close()


async def test_queued_messages_and_patterns_have_quotas(live, tenant, db_url):
    auth = live.auth(tenant)
    # The refusals stay raw requests: their Retry-After header is checked.
    async with live.client(tenant) as rt, httpx.AsyncClient(base_url=live.url) as client:
        await rt.admin.set_limits(tenant, {"queued_messages_per_agent": 3, "queued_messages": 5, "patterns": 2})
        await rt.agents.send_many("a", [{"sender": "s", "content": i} for i in range(3)])
        assert_limited(await client.post("/v1/agents/a/messages", headers=auth, json={"sender": "s", "content": 9}),
                       "quota_exceeded", "queued_messages_per_agent")
        await rt.agents.send_many("b", [{"sender": "s", "content": i} for i in range(2)])
        assert_limited(await client.post("/v1/agents/c/messages", headers=auth, json={"sender": "s", "content": 9}),
                       "quota_exceeded", "queued_messages")
        got = (await rt.agents.receive("a", max=10))["messages"]
        await rt.agents.ack_many("a", [m["message_id"] for m in got])
        await rt.agents.send("c", "s", 9)
        for i in range(2):
            await rt.learning.success({"ok": i}, {"table": f"t{i}"})
        assert_limited(await client.post("/v1/learning/successes", headers=auth,
                                         json={"result": {"ok": 3}, "context": {"table": "t3"}}), "quota_exceeded", "patterns")
        await rt.learning.success({"ok": 0}, {"table": "t0"})  # evidence for a known pattern still counts
    messages = await stored(db_url, MessageRow, tenant)
    assert len(messages) == 6 and sorted(m["content"] for m in messages if m["receiver"] == "a") == [0, 1, 2]
    assert len(await stored(db_url, PatternRow, tenant)) == 2


class Reached:
    """An ASGI layer between the edge and the app: counts what got past the edge."""

    def __init__(self, app) -> None:
        self.app, self.http, self.sockets = app, 0, 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            self.http += 1
        elif scope["type"] == "websocket":
            self.sockets += 1
        await self.app(scope, receive, send)


@pytest.fixture
async def edge_server(ray_session, db_url, backend):
    """The app behind the edge middleware, as a direct-ingress replica runs it: refusals at the
    edge never reach `reached` (standing in for Serve's per-request work and the app)."""
    layers = {}

    def wrap(app):
        layers["reached"] = Reached(app)
        return EdgeRateLimits(layers["reached"])

    async with LiveServer(Runtime(settings_for(db_url, backend)), wrap=wrap) as server:
        serve_at_edge(server.runtime)
        try:
            yield server, layers["reached"]
        finally:
            serve_at_edge(None)


async def test_the_edge_refuses_over_the_rate_before_the_app_and_counts_each_request_once(edge_server, tenant):
    live, reached = edge_server
    async with live.client() as operator, httpx.AsyncClient(base_url=live.url) as client:
        await operator.admin.set_limits(tenant, {"requests_per_second": {"events": 5}})
        before = reached.http
        # raw: the refusals' Retry-After header is checked
        answers = await asyncio.gather(*(client.get("/v1/events", headers=live.auth(tenant)) for _ in range(40)))
    statuses = [r.status_code for r in answers]
    # Each request spends one token: were the app's own check to spend another, fewer would pass.
    assert 5 <= statuses.count(200) <= 8 and statuses.count(429) == 40 - statuses.count(200), statuses
    assert_limited(next(r for r in answers if r.status_code == 429), "rate_limited", "requests:events")
    assert reached.http - before == statuses.count(200)  # no refusal got past the edge


async def test_the_edge_closes_sockets_of_a_tenant_known_to_be_at_its_cap(edge_server, tenant):
    live, reached = edge_server
    async with live.client() as operator:
        await operator.admin.set_limits(tenant, {"connections": 1})
    token = live.token(tenant)
    first = await connect(live.ws_url, token)
    assert (await recv(first))["type"] == "connection_established"
    codes = []
    before = reached.sockets
    for _ in range(5):  # the first refusal asks the quota shard; the next ones are refused at the edge
        extra = await connect(live.ws_url, token)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await recv(extra)
        codes.append(closed.value.rcvd.code)
    assert codes == [4029] * 5
    assert reached.sockets - before == 1
    await first.close()
    while live.runtime.quotas.sockets.get(tenant):  # until the server has seen the close
        await asyncio.sleep(0.01)
    # A socket of the tenant closing on this replica ends the remembered refusal at once: the next
    # socket is admitted on its first try, not when the memory runs out.
    await (await admitted_again(live, token, attempts=1)).close()
