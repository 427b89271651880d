"""Events: publish, replay, and the open connections (docs/http-api.md)."""
from __future__ import annotations

import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute

from actors.event_hub.client import HubUnavailable
from actors.event_hub.notifications import STREAM_TYPES
from serve_app.errors import ApiError
from serve_app.requests import authenticate, int_param, read_json, runtime_of
from serve_app.websocket import valid_flow_id, websocket_endpoint

log = logging.getLogger("raytenant.http")


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


ROUTES = [
    Route("/v1/events", publish_events, methods=["POST"]),
    Route("/v1/events", replay_events, methods=["GET"]),
    Route("/v1/connections", connections),
    WebSocketRoute("/v1/ws", websocket_endpoint),
]
