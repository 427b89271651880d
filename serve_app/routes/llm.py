"""The OpenAI-compatible gateway for the tenants' own applications (docs/costs.md, "Gateway").

`POST /v1/llm/chat/completions`, plain or streaming (SSE), with a tenant token (`llm:call`). Each
call reserves its worst case (the prompt's byte bound plus `max_tokens`, which the gateway sets on
the forwarded request), forwards through the openai client library to the provider the operator
configured for the model, and settles with the usage the provider reported. A failed provider
call costs nothing and its status passes through (429 stays 429, with Retry-After).
`Idempotency-Key` makes retries safe: a retry of a finished call gets the stored answer without a
second provider call; `X-Raytenant-Agent` and `X-Raytenant-Flow` tag the usage record.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from typing import Any, AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from crews.providers import Provider, prompt_bound, usage_of
from serve_app.auth import Claims
from serve_app.errors import ApiError, error_response
from serve_app.contract import api
from serve_app.requests import authenticate, parse_body, runtime_of
from serve_app.routes.costs import ledger
from serve_app.schemas.llm import ChatBody, ChatCompletion
from storage import strict_json

log = logging.getLogger("raytenant.gateway")

MAX_REPLY_BYTES = 1 << 20  # answers kept for idempotent retries


def _header(request: Request, name: str) -> str | None:
    value = request.headers.get(name)
    if value is None:
        return None
    if not 0 < len(value) <= 200 or not strict_json.is_clean_text(value):
        raise ApiError(422, "invalid_header", f"{name} must be 1-200 characters")
    return value


def _request_hash(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@api("An OpenAI-compatible chat completion through the tenant's budgets (plain or server-sent events)",
     scope="llm:call", body=ChatBody, answer=ChatCompletion,
     errors={402: ("budget_exceeded",), 403: ("model_not_allowed",),
             409: ("idempotency_mismatch", "idempotency_in_progress", "idempotency_reply_unavailable"),
             422: ("unknown_model", "invalid_max_tokens", "invalid_header"), 429: ("provider_error",),
             502: ("provider_error", "provider_unavailable"), 503: ("ledger_unavailable",),
             504: ("provider_timeout",)})
async def chat_completions(request: Request) -> Response:
    claims = authenticate(request, "llm:call")
    runtime = runtime_of(request)
    settings = runtime.settings
    body = await parse_body(request, ChatBody)
    max_tokens = body.max_completion_tokens or body.max_tokens or settings.gateway_default_max_tokens
    if max_tokens > settings.gateway_max_tokens:
        raise ApiError(422, "invalid_max_tokens",
                       f"max_tokens must be an integer between 1 and {settings.gateway_max_tokens}")
    payload, stream = body.model_dump(exclude_unset=True), body.stream
    model = payload["model"]
    provider = runtime.providers.for_model(model)
    if provider is None:
        raise ApiError(422, "unknown_model", f"no provider is configured for {model!r}", model=model)
    if not runtime.providers.allows(claims.tenant, model):
        raise ApiError(403, "model_not_allowed", f"this tenant may not use {model!r}", model=model)
    tags = {"agent": _header(request, "x-raytenant-agent"), "flow_id": _header(request, "x-raytenant-flow"),
            "user": claims.user, "engagement": claims.engagement}
    key = _header(request, "idempotency-key")
    bound = prompt_bound(payload["messages"], payload.get("tools"))
    digest = _request_hash(payload)
    levels = {"agent": tags["agent"], "user": claims.user, "engagement": claims.engagement}
    begun = await ledger(request).call("gateway_begin", claims.tenant, model, bound, max_tokens, key, digest, levels)
    if "reply" in begun:
        return _replay(begun["reply"])
    forward = {k: v for k, v in payload.items() if k != "max_completion_tokens"}
    forward["max_tokens"] = max_tokens
    call = _Call(request, claims, begun["reservation_id"], key, digest, tags)
    client = runtime.llm_client(provider)
    if stream:
        forward["stream_options"] = {**(payload.get("stream_options") or {}), "include_usage": True}
        wants_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
        try:
            chunks = await client.chat.completions.create(**forward)
        except Exception as error:  # noqa: BLE001 - every provider failure is answered, nothing charged
            return await call.failed(error, provider)
        return StreamingResponse(call.relay(chunks, wants_usage, bound, max_tokens), media_type="text/event-stream")
    try:
        raw = await client.chat.completions.with_raw_response.create(**forward)
        body = raw.http_response.json()
    except Exception as error:  # noqa: BLE001
        return await call.failed(error, provider)
    await call.settle(usage_of(body.get("usage")), {"body": body})
    return JSONResponse(body)


class _Call:
    """One forwarded call's reservation, settled once whichever way the call ends."""

    def __init__(self, request: Request, claims: Claims, reservation_id: str, key: str | None, digest: str,
                 tags: dict[str, Any]) -> None:
        self.request, self.claims, self.reservation_id = request, claims, reservation_id
        self.key, self.digest, self.tags = key, digest, tags

    async def settle(self, usage: dict[str, int], reply: dict[str, Any] | None) -> None:
        """The answer is kept only for a call with an Idempotency-Key (its retries replay it)."""
        if self.key is None or (reply is not None and len(json.dumps(reply)) > MAX_REPLY_BYTES):
            reply = None
        await ledger(self.request).call("gateway_finish", self.claims.tenant, self.reservation_id,
                     {**usage, **self.tags}, self.key, self.digest, reply)

    async def failed(self, error: Exception, provider: Provider) -> Response:
        import openai

        await ledger(self.request).call("gateway_abort", self.claims.tenant, self.reservation_id, self.key)
        if isinstance(error, openai.APIStatusError):
            headers = {"retry-after": error.response.headers["retry-after"]} if "retry-after" in error.response.headers else {}
            message = getattr(error, "message", None) or str(error)
            response = error_response(error.status_code, "provider_error", f"{provider.name}: {message}"[:500],
                                      provider_status=error.status_code)
            response.headers.update(headers)
            return response
        if isinstance(error, openai.APITimeoutError):
            return error_response(504, "provider_timeout", f"{provider.name} did not answer in time; nothing was charged")
        if isinstance(error, openai.APIConnectionError):
            return error_response(502, "provider_unavailable", f"{provider.name} could not be reached; nothing was charged")
        log.exception("gateway call to %s failed", provider.name, exc_info=error)
        return error_response(502, "provider_error", f"{provider.name} answered something the gateway cannot read")

    async def relay(self, chunks: Any, wants_usage: bool, bound: int, max_tokens: int) -> AsyncIterator[str]:
        """Forward the provider's chunks; settle with its final usage chunk. A stream cut short
        (provider or client gone) settles the worst case it could have cost, off the client's path."""
        usage: dict[str, int] | None = None
        kept: list[dict[str, Any]] = []
        try:
            async for chunk in chunks:
                data = chunk.model_dump(exclude_unset=True)
                if chunk.usage is not None:
                    usage = usage_of(chunk.usage)
                    if not wants_usage and not data.get("choices"):
                        continue
                kept.append(data)
                yield f"data: {json.dumps(data, separators=(',', ':'))}\n\n"
        except Exception as error:  # noqa: BLE001 - the client already has a 200: end the stream with an error event
            log.warning("stream from provider broke: %r", error)
            yield f"data: {json.dumps({'error': {'code': 'provider_stream_broken', 'message': 'the provider stream ended early'}})}\n\n"
        finally:
            final = usage if usage is not None else {"input_tokens": bound, "output_tokens": max_tokens, "cached_tokens": 0}
            settling = asyncio.ensure_future(self.settle(final, {"chunks": kept} if usage is not None else None))
            await asyncio.shield(settling)
        yield "data: [DONE]\n\n"


def _replay(reply: dict[str, Any] | None) -> Response:
    if reply is None:
        raise ApiError(409, "idempotency_reply_unavailable", "this call was made and charged; its answer was not kept")
    if "body" in reply:
        return JSONResponse(reply["body"], headers={"idempotent-replay": "true"})

    async def events() -> AsyncIterator[str]:
        for data in reply.get("chunks", []):
            yield f"data: {json.dumps(data, separators=(',', ':'))}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"idempotent-replay": "true"})


ROUTES = [Route("/v1/llm/chat/completions", chat_completions, methods=["POST"])]
