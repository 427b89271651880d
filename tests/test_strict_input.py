"""Strict JSON at every boundary, against the real ingress, shards and databases.

A hostile tenant sends NaN, Infinity, 1e400, "\\u0000", lone surrogates, 2**70 and deep nesting to
every JSON route, as bodies and query values and WebSocket frames. Nothing answers 500, a refused
request changes nothing the tenant can see, and a request holding a non-strict value is refused.
"""
from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage import strict_json

NASTY_LEAVES = [float("nan"), float("inf"), float("-inf"), "a\x00b", "\ud800", 2**70, -(2**70)]
NASTY_TEXT = ['{"a": NaN}', '[Infinity]', '{"x": 1e400}', '"\\u0000"', '{"k": "\\udc00"}', '[' * 5000 + ']' * 5000,
              '{"a":' * 70 + '1' + '}' * 70, '{"n": 123456789012345678901234567890}']

# A body each route accepts, so that a nasty leaf put into it reaches past the first checks.
TEMPLATES: dict[tuple[str, str], dict] = {
    ("POST", "/v1/events"): {"type": "flow_update", "flow_id": "f-1", "data": {"progress": 1}},
    ("POST", "/v1/costs/usage"): {"model": "gpt-4o-mini", "input_tokens": 10, "output_tokens": 5, "agent": "a"},
    ("POST", "/v1/costs/reservations"): {"model": "gpt-4o-mini", "input_tokens": 10, "output_tokens": 5},
    ("PUT", "/v1/costs/budget"): {"monthly_budget": 10, "alert_threshold": 0.8},
    ("PUT", "/v1/costs/budgets/user/alice"): {"amount": 5, "period": "day", "mode": "soft", "thresholds": [0.5], "rpm": 10},
    ("POST", "/v1/costs/select-model"): {"task": "summarise", "min_quality": 0.5},
    ("POST", "/v1/costs/estimate"): {"model": "gpt-4o-mini", "tokens": 100},
    ("PUT", "/v1/admin/tenants/{tenant}/prices/my-model"): {"input_per_token": 1e-6, "output_per_token": 2e-6},
    ("PUT", "/v1/admin/tenants/{tenant}/budget"): {"monthly_cap": 10},
    ("PUT", "/v1/admin/tenants/{tenant}/limits"): {"connections": 500, "requests_per_second": {"events": 900}},
    ("POST", "/v1/admin/tenants/{tenant}/revocations"): {"jti": "ab" * 16},
    ("POST", "/v1/learning/corrections"): {"original": {"f": "a"}, "corrected": {"f": "b"}, "context": {"k": "v"}},
    ("POST", "/v1/learning/successes"): {"result": {"f": "a"}, "context": {"k": "v"}},
    ("POST", "/v1/learning/recommendations"): {"context": {"k": "v"}},
    ("POST", "/v1/learning/feedback"): {"pattern_id": "0" * 32, "accepted": True},
    ("POST", "/v1/mappings"): {"source_fields": ["hostname"], "target_fields": ["host_name"]},
    ("POST", "/v1/mappings/corrections"): {"source_field": "hostname", "target_field": "host_name"},
    ("POST", "/v1/agents/mapper/messages"): {"sender": "validator", "content": {"x": 1}},
    ("POST", "/v1/agents/mapper/messages/ack"): {"message_ids": ["0" * 32]},
    ("PUT", "/v1/agents/mapper/topics"): {"topics": ["alerts"]},
    ("POST", "/v1/topics/alerts/messages"): {"sender": "validator", "content": {"x": 1}},
    ("POST", "/v1/flows"): {"name": "x", "kind": "discovery", "data": [{"hostname": "a"}]},
    ("POST", f"/v1/flows/{'0' * 32}/corrections"): {"corrections": [{"source_field": "a", "target_field": "b"}]},
    ("POST", "/v1/agents/mapper/requests"): {"sender": "validator", "content": {"x": 1}, "timeout": 0.01},
    ("POST", "/v1/llm/chat/completions"): {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
}
QUERIES = [("/v1/events", "after"), ("/v1/events", "flow_id"), ("/v1/costs/summary", "end"),
           ("/v1/costs/summary", "start"), ("/v1/costs/prices", "model"), ("/v1/agents/mapper/messages", "wait"),
           ("/v1/flows", "status"), ("/v1/agents/mapper/dead-letters", "limit"), ("/v1/costs/budgets", "scope")]
QUERY_VALUES = ["0001-01-01", "9999-12-31T23:59:59-23:59", "\x00", "NaN", "-1", "1e400", "%00", "a" * 5000, "inf"]


def nasty_in(template: dict, where: int, leaf) -> dict:
    """The template with one value (or a new key) replaced by a nasty leaf."""
    body = json.loads(json.dumps(template))
    keys = list(body)
    key = keys[where % len(keys)] if where < 2 * len(keys) else "extra"
    body[key] = {"deep": leaf} if where % 3 == 0 else leaf
    return body


def encode(body) -> bytes:
    # ensure_ascii keeps "\ud800" an escape in the bytes, as a hostile client would send it
    return json.dumps(body, allow_nan=True).encode()


def snapshot(client: httpx.Client, auth: dict) -> dict:
    """Everything the tenant's state shows, to compare before and after a refused request."""
    views = {}
    for path in ("/v1/events?after=0&limit=1000", "/v1/costs/summary?start=2026-01-01&end=2030-01-01", "/v1/learning/stats",
                 "/v1/costs/budgets",
                 "/v1/agents/mapper", "/v1/agents/mapper/topics", "/v1/flows", "/v1/costs/prices?model=my-model"):
        response = client.get(path, headers=auth)
        body = response.json()
        views[path] = (response.status_code, body if path != "/v1/events?after=0&limit=1000" else body.get("head"))
    budget = client.get("/v1/costs/budget", headers=auth)
    views["budget"] = (budget.status_code, budget.json())
    return views


def property_run(url: str, auth: dict, tenant: str, operator: dict) -> None:
    routes = sorted(TEMPLATES)
    with httpx.Client(base_url=url, timeout=30) as client:
        state = {"before": snapshot(client, auth)}

        def check(method: str, path: str, content: bytes, hostile: bool) -> None:
            who = operator if path.startswith("/v1/admin/") else auth
            response = client.request(method, path.format(tenant=tenant), content=content,
                                      headers={**who, "content-type": "application/json"})
            assert response.status_code != 500, (method, path, content[:200], response.text[:300])
            body = strict_json.loads(response.content)  # every answer is strict JSON
            if hostile:
                assert response.status_code in (400, 413, 422), (method, path, content[:200], response.status_code)
                assert body["error"]["code"] and body["error"]["message"]
            if response.status_code >= 400:
                assert snapshot(client, auth) == state["before"], (method, path, content[:200])
            else:
                state["before"] = snapshot(client, auth)

        @settings(max_examples=80, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(route=st.sampled_from(routes), where=st.integers(0, 12), leaf=st.sampled_from(NASTY_LEAVES),
               raw=st.sampled_from(NASTY_TEXT), use_raw=st.booleans())
        def hostile_bodies(route, where, leaf, raw, use_raw):
            method, path = route
            content = raw.encode() if use_raw else encode(nasty_in(TEMPLATES[route], where, leaf))
            check(method, path, content, hostile=True)

        json_values = st.recursive(
            st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False, allow_infinity=False)
            | st.text(max_size=20),
            lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
            max_leaves=12)

        @settings(max_examples=80, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(route=st.sampled_from(routes), body=json_values)
        def arbitrary_bodies(route, body):
            method, path = route
            check(method, path, json.dumps(body).encode(), hostile=False)

        @settings(max_examples=40, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(query=st.sampled_from(QUERIES), value=st.sampled_from(QUERY_VALUES))
        def hostile_queries(query, value):
            path, name = query
            response = client.get(path, params={name: value}, headers=auth)
            assert response.status_code != 500, (path, name, value, response.text[:300])
            strict_json.loads(response.content)

        hostile_bodies()
        arbitrary_bodies()
        hostile_queries()


@pytest.mark.timeout(600)
async def test_no_route_answers_500_and_refusals_change_nothing(live, tenant):
    auth = live.admin_auth(tenant)  # every scope, so refusals are about the input
    await asyncio.to_thread(property_run, live.url, auth, tenant, live.operator_auth())


async def test_nasty_frames_get_an_error_and_the_socket_stays(live, tenant):
    async with websockets.connect(f"{live.ws_url}?token={live.token(tenant)}") as ws:
        assert json.loads(await ws.recv())["type"] == "connection_established"
        for frame in NASTY_TEXT + ['{"type": "subscribe_flow", "flow_id": "a\\u0000"}']:
            await ws.send(frame)
            answer = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert answer["type"] == "error" and answer["code"], frame[:80]
        await ws.send('{"type": "ping"}')
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "pong"


async def test_tenant_names_are_matched_whole(live):
    async with httpx.AsyncClient(base_url=live.url) as client:
        for name in ("acme\n", "acme\r\n", "ac\x00me", "acme "):
            response = await client.post("/v1/admin/tokens", json={"tenant": name},
                                          headers={"Authorization": f"Bearer {live.runtime.settings.operator_token}"})
            assert response.status_code == 422, name


def test_strict_loads_refuses_each_kind():
    for text, code in [('{"a": NaN}', "invalid_number"), ("[1e400]", "invalid_number"),
                       ('"\\u0000"', "invalid_string"), ('"\\ud800"', "invalid_string"),
                       ("[" * 100_000 + "]" * 100_000, "too_deep"), ('[' * 65 + ']' * 65, "too_deep"),
                       ("[12345678901234567890123]", "invalid_number"), (b"\xff", "malformed_json")]:
        with pytest.raises(strict_json.StrictJSONError) as refused:
            strict_json.loads(text)
        assert refused.value.code == code, text[:20]
    assert strict_json.loads('[' * 64 + ']' * 64) is not None
    assert strict_json.loads('"\\ud83d\\ude00 ok"') == "\U0001F600 ok"
    assert strict_json.dumps_stored({"a": "\\u0000 is text"}) == '{"a":"\\\\u0000 is text"}'
    for bad in ({"a": float("nan")}, {"a": "\x00"}, ["\udc00"]):
        with pytest.raises(strict_json.StrictJSONError):
            strict_json.dumps_stored(bad)
