"""HTTP routes (docs/http-api.md). The tenant always comes from the bearer token."""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from actors.event_hub_client import HubUnavailable
from actors.notifications import STREAM_TYPES
from serve_app.auth import DEFAULT_SCOPES, AuthError, Claims, bearer, minted_ids, valid_tenant
from serve_app.errors import ApiError
from serve_app.runtime import Runtime
from serve_app.websocket import valid_flow_id
from storage import strict_json

log = logging.getLogger("raytenant.http")


def runtime_of(request: Request) -> Runtime:
    return request.app.state.runtime


def authenticate(request: Request, scope: str) -> Claims:
    runtime = runtime_of(request)
    try:
        claims = runtime.tokens.verify(bearer(request.headers.get("authorization")))
    except AuthError as error:
        if error.claims is not None:  # a revoked token: whose attempt it was goes to the audit log
            runtime.audit.refused(error.claims, error.code, request.url.path)
        raise ApiError(error.status, error.code, error.message) from error
    if not claims.allows(scope):
        log.warning("tenant %s user %s refused: scope %s", claims.tenant, claims.user, scope)
        raise ApiError(403, "forbidden", f"the token lacks the {scope} scope")
    return claims


async def read_json(request: Request) -> Any:
    limit = runtime_of(request).settings.max_body_bytes
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise ApiError(413, "payload_too_large", f"request body over {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, "payload_too_large", f"request body over {limit} bytes")
    try:
        return strict_json.loads(body)
    except strict_json.StrictJSONError as error:
        status = 400 if error.code in ("malformed_json", "too_deep") else 422
        raise ApiError(status, error.code, f"the request body is not strict JSON: {error.message}") from error


def int_param(request: Request, name: str, default: int, *, low: int = 0, high: int | None = None) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit():
        raise ApiError(422, "invalid_parameter", f"{name} must be a non-negative integer")
    value = int(raw)
    if value < low or (high is not None and value > high):
        raise ApiError(422, "invalid_parameter", f"{name} must be between {low} and {high}")
    return value


def _validate_events(payload: Any, limit: int) -> list[dict[str, Any]]:
    items = payload.get("events") if isinstance(payload, dict) and "events" in payload else payload
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, list) or not items:
        raise ApiError(422, "invalid_events", "send an event object or {\"events\": [...]} with at least one event")
    if len(items) > limit:
        raise ApiError(422, "too_many_events", f"at most {limit} events per request")
    events = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ApiError(422, "invalid_events", f"events[{i}] must be an object")
        kind, flow_id, data = item.get("type"), item.get("flow_id"), item.get("data", {})
        if kind not in STREAM_TYPES:
            raise ApiError(422, "invalid_event_type", f"events[{i}].type must be one of {sorted(STREAM_TYPES)}")
        if flow_id is not None and not valid_flow_id(flow_id):
            raise ApiError(422, "invalid_flow_id", f"events[{i}].flow_id must be a string of 1-128 characters")
        if not isinstance(data, dict):
            raise ApiError(422, "invalid_data", f"events[{i}].data must be an object")
        events.append({"type": kind, "flow_id": flow_id, "data": data})
    return events


async def publish_events(request: Request) -> JSONResponse:
    claims = authenticate(request, "events:write")
    runtime = runtime_of(request)
    events = _validate_events(await read_json(request), runtime.settings.max_events_per_request)
    wait = await runtime.quotas.admit(claims.tenant, "events", len(events))
    if wait is not None:
        raise ApiError(429, "rate_limited", f"over this tenant's rate of events published; retry after {wait:.3f} s",
                       limit="events_per_second", retry_after=round(wait, 3))
    try:
        stored = await runtime.hub.append_events(claims.tenant, events)
    except HubUnavailable as error:
        raise ApiError(503, "stream_unavailable", "the event stream is unavailable; nothing was published") from error
    runtime.router.dispatch_local(claims.tenant, stored)
    return JSONResponse({"seqs": [event.seq for event in stored]}, status_code=201)


async def replay_events(request: Request) -> JSONResponse:
    claims = authenticate(request, "events:read")
    runtime = runtime_of(request)
    after = int_param(request, "after", 0)
    limit = int_param(request, "limit", 100, low=1, high=1000)
    flow_id = request.query_params.get("flow_id")
    if flow_id is not None and not valid_flow_id(flow_id):
        raise ApiError(422, "invalid_flow_id", "flow_id must be a string of 1-128 characters")
    page = await runtime.hub.read(claims.tenant, after, flow_ids=[flow_id] if flow_id else None, limit=limit)
    if page["gap"]:
        raise ApiError(
            410, "events_expired", "events after this seq are no longer kept", oldest_seq=page["floor"], head=page["head"]
        )
    events = [e.to_message() for e in page["events"]][:limit]
    next_after = events[-1]["seq"] if events else max(after, min(page["head"], after))
    return JSONResponse(
        {"events": events, "next_after": next_after, "head": page["head"], "has_more": bool(events) and next_after < page["head"]}
    )


async def connections(request: Request) -> JSONResponse:
    claims = authenticate(request, "events:read")
    runtime = runtime_of(request)
    await runtime.router.report_now()
    found = await runtime.hub.presence(claims.tenant)
    return JSONResponse({"tenant": claims.tenant, **found})


async def mint_token(request: Request) -> JSONResponse:
    runtime = runtime_of(request)
    if not runtime.tokens.is_operator(bearer(request.headers.get("authorization"))):
        raise ApiError(401, "operator_token_required", "this route needs the operator token")
    payload = await read_json(request)
    if not isinstance(payload, dict):
        raise ApiError(422, "invalid_body", "send a JSON object")
    tenant = payload.get("tenant")
    if not valid_tenant(tenant):
        raise ApiError(422, "invalid_tenant", "tenant must be 1-128 characters of letters, digits and . _ : -")
    scopes = payload.get("scopes", list(DEFAULT_SCOPES))
    ttl = payload.get("ttl_seconds")
    user, engagement = payload.get("user"), payload.get("engagement")
    if not (isinstance(scopes, list) and scopes and all(isinstance(s, str) for s in scopes)):
        raise ApiError(422, "invalid_scopes", "scopes must be a non-empty list of strings")
    longest = runtime.tokens.max_ttl
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 < ttl <= longest):
        raise ApiError(422, "invalid_ttl", f"ttl_seconds must be an integer between 1 and {longest}",
                       max_ttl_seconds=longest)
    if any(v is not None and not (isinstance(v, str) and 0 < len(v) <= 200 and v.isprintable())
           for v in (user, engagement)):
        raise ApiError(422, "invalid_claims", "user and engagement must be 1-200 printable characters")
    await runtime.tenant_lifecycle.for_token(tenant)  # 404 unknown (when not created on first mint), 403 suspended
    try:
        token, exp = runtime.tokens.mint(tenant, user=user, engagement=engagement, scopes=scopes, ttl=ttl)
    except LookupError as error:  # no usable signing key and legacy tokens refused
        raise ApiError(503, "signing_key_unavailable", str(error)) from error
    jti, kid = minted_ids(token)
    log.info("operator minted a token for tenant %s", tenant)
    await runtime.audit.record("operator", "mint_token", tenant, "ok", jti=jti, kid=kid, user=user,
                               scopes=list(scopes), expires_at=exp)
    return JSONResponse({"token": token, "tenant": tenant, "expires_at": exp, "jti": jti, "kid": kid},
                        status_code=201)


async def healthz(_request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    runtime = runtime_of(request)
    try:
        await asyncio.wait_for(runtime.hub.head("_readyz"), 5.0)
    except Exception as error:  # noqa: BLE001 - any failure means not ready
        return JSONResponse(
            {"status": "unavailable", "error": {"code": "not_ready", "message": str(error)[:200]}}, status_code=503
        )
    return JSONResponse({"status": "ready", "replica": runtime.replica_id})
