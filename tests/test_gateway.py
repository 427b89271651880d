"""The OpenAI-compatible gateway and MeteredLLM on a real provider protocol: the loopback provider
(tests/loopback_provider.py) over real HTTP, reached through the openai client library, with the
real ingress, ledger shards and databases."""
from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import select

from actors.ledger.prices import default_catalog
from serve_app.runtime import Runtime
from storage.engine import create_engine
from storage.models import UsageRow
from tests.conftest import LiveServer, settings_for
from tests.loopback_provider import ServedProvider
from tests.http_support import MODEL, assert_error, flow_body, providers_json, refused, wait_flow

pytestmark = pytest.mark.integration
def client_for(server: LiveServer, tenant: str, **headers: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{server.url}/v1/llm", api_key=server.token(tenant), max_retries=0,
                              default_headers=headers or None)


async def usage_rows(db_url: str, tenant: str) -> list[dict[str, Any]]:
    engine = create_engine(db_url)
    try:
        async with engine.connect() as conn:
            query = select(UsageRow).where(UsageRow.tenant == tenant).order_by(UsageRow.id)
            return [dict(r) for r in (await conn.execute(query)).mappings()]
    finally:
        await engine.dispose()


def priced(usage: dict[str, Any], model: str = MODEL) -> int:
    cached = usage.get("prompt_tokens_details", {}).get("cached_tokens", 0)
    return default_catalog().lookup(model).cost_nanos(usage["prompt_tokens"], usage["completion_tokens"], cached)


async def test_plain_and_streaming_calls_are_charged_what_the_provider_reported(gateway, provider, tenant, db_url):
    client = client_for(gateway, tenant, **{"X-Raytenant-Agent": "support-bot", "X-Raytenant-Flow": "f-7"})
    plain = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hello there"}],
                                                 max_tokens=5)
    assert plain.choices[0].message.content == "The answer is forty two"  # the provider honoured max_tokens
    assert provider.provider.requests[-1]["max_tokens"] == 5
    stream = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "and now?"}],
                                                  stream=True, stream_options={"include_usage": True})
    pieces, final_usage = [], None
    async for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
        if chunk.usage:
            final_usage = chunk.usage
    assert "".join(pieces) == "The answer is forty two and nothing more" and final_usage is not None
    assert provider.provider.requests[-1]["max_tokens"] == gateway.runtime.settings.gateway_default_max_tokens
    assert provider.provider.requests[-1]["stream_options"] == {"include_usage": True}
    quiet = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], stream=True)
    assert [chunk.usage async for chunk in quiet if chunk.usage] == []  # usage only when the client asked
    rows = await usage_rows(db_url, tenant)
    assert [r["cost_nanos"] for r in rows] == [priced(u) for u in provider.provider.usage_reported]
    assert {(r["agent"], r["flow_id"]) for r in rows} == {("support-bot", "f-7")}
    assert all(r["overrun_nanos"] == 0 for r in rows)  # the byte bound is never below the provider's count
    async with gateway.client() as op:
        view = await op.admin.month(tenant)
    assert view["reserved"] == 0 and view["used"] == sum(r["cost_nanos"] for r in rows) / 1e9


async def test_failed_provider_calls_cost_nothing_and_pass_their_status(gateway, provider, tenant, db_url):
    client = client_for(gateway, tenant)
    provider.provider.failures = [429, 500]
    with pytest.raises(openai.RateLimitError) as limited:
        await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert limited.value.response.headers.get("retry-after") == "1"
    assert limited.value.response.json()["error"]["code"] == "provider_error"
    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True)
    provider.provider.delay = 2.0  # beyond the provider's 1 s timeout
    with pytest.raises(openai.APIStatusError) as slow:
        await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert slow.value.status_code == 504
    provider.provider.delay = 0.0
    assert await usage_rows(db_url, tenant) == []
    async with gateway.client() as op:
        view = await op.admin.month(tenant)
    assert view["reserved"] == 0 and view["used"] == 0


async def test_idempotency_key_makes_retries_safe(gateway, provider, tenant, db_url):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "charge me once"}]}
    async with gateway.client(tenant) as rt, httpx.AsyncClient(base_url=gateway.url) as http:
        first = await rt.llm.chat(MODEL, body["messages"], idempotency_key="req-1")
        # Raw: the replay is told by a response header.
        again = await http.post("/v1/llm/chat/completions", json=body,
                                headers={"Authorization": f"Bearer {rt.token}", "Idempotency-Key": "req-1"})
        assert again.status_code == 200 and first == again.json()
        assert again.headers["idempotent-replay"] == "true"
        assert len(provider.provider.requests) == 1
        await refused(rt.llm.chat(MODEL, body["messages"], idempotency_key="req-1", temperature=0.5), 409,
                      "idempotency_mismatch")
        streamed = {**gateway.auth(tenant), "Idempotency-Key": "req-2"}  # raw: the client does not stream a chat
        text = [(await http.post("/v1/llm/chat/completions", headers=streamed, json={**body, "stream": True})).text
                for _ in range(2)]
        assert text[0] == text[1] and text[0].endswith("data: [DONE]\n\n")
        assert len(provider.provider.requests) == 2
    assert len(await usage_rows(db_url, tenant)) == 2


async def test_bad_gateway_requests_are_refused_and_write_nothing(gateway, provider, tenant, db_url, backend):
    async with gateway.client(tenant) as rt, httpx.AsyncClient(base_url=gateway.url) as http:
        message = [{"role": "user", "content": "hi"}]
        await refused(rt.llm.chat("nope-1", message), 422, "unknown_model")
        await refused(rt.llm.chat("gpt-4o", message), 403, "model_not_allowed")
        auth = {"Authorization": f"Bearer {rt.token}"}
        for body, status, code in (  # bodies that break the schema
            ({"model": MODEL, "messages": message, "max_tokens": 10**6}, 422, "invalid_max_tokens"),
            ({"model": MODEL, "messages": message, "max_tokens": -1}, 422, "invalid_max_tokens"),
            ({"model": MODEL, "messages": message, "max_tokens": 1.5}, 422, "invalid_max_tokens"),
            ({"model": MODEL, "messages": message, "n": 3}, 422, "unsupported_n"),
            ({"model": MODEL, "messages": message, "api_base": "http://elsewhere"}, 422, "unsupported_field"),
            ({"model": MODEL, "messages": []}, 422, "invalid_messages"),
            ({"model": MODEL, "messages": [{"content": "no role"}]}, 422, "invalid_messages"),
        ):
            assert_error(await http.post("/v1/llm/chat/completions", headers=auth, json=body), status, code)
        async with gateway.client(tenant, scopes=["costs:read"]) as reader:
            await refused(reader.llm.chat(MODEL, message), 403, "forbidden")
        await rt.admin.set_cap(tenant, 1e-6)
        await refused(rt.llm.chat(MODEL, message), 402, "budget_exceeded")
        async with gateway.client(f"premium-{backend}") as premium:
            await premium.llm.chat("gpt-4o", message)  # allowed
    assert provider.provider.requests and all(r["model"] == "gpt-4o" for r in provider.provider.requests)
    assert await usage_rows(db_url, tenant) == []


async def test_a_discovery_flow_on_the_provider_is_charged_exactly(ray_session, db_url, backend, tenant):
    """RAYTENANT_LLM names a configured provider model: every agent's call goes through the
    provider, and the flow's recorded cost is the provider's reported usage at catalog price."""
    async with ServedProvider() as served:
        settings = settings_for(db_url, backend, actor_prefix=f"test-{backend}-gw-{uuid.uuid4().hex[:6]}-",
                                llm=MODEL, llm_providers=providers_json(served.base_url))
        async with LiveServer(Runtime(settings)) as server:
            async with server.client(tenant) as rt:
                created = await rt.flows.create(**flow_body())
                flow = await wait_flow(rt, created["flow_id"], timeout=120)
            assert flow["status"] == "completed", flow
            await asyncio.sleep(0.2)
            rows = await usage_rows(db_url, tenant)
    reported = served.provider.usage_reported
    assert len(rows) == len(reported) > 4
    assert all(r["max_tokens"] for r in served.provider.requests)  # every call carried its reserved bound
    assert sum(r["cost_nanos"] for r in rows) == sum(priced(u) for u in reported)
    assert sorted((r["input_tokens"], r["output_tokens"]) for r in rows) == \
        sorted((u["prompt_tokens"], u["completion_tokens"]) for u in reported)


async def test_answers_are_kept_only_for_calls_with_a_key(gateway, provider, tenant, db_url):
    client = client_for(gateway, tenant)
    await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "private"}])
    [row] = await usage_rows(db_url, tenant)
    assert row["reply"] is None and row["idempotency_key"] is None
