"""Events: publish, replay, and the open connections (docs/http-api.md)."""
from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute

from actors.event_hub.client import HubUnavailable
from serve_app.contract import api
from serve_app.errors import ApiError
from serve_app.requests import authenticate, parse_body, parse_query, runtime_of
from serve_app.schemas import events as schemas
from serve_app.schemas.base import items_of
from serve_app.websocket import websocket_endpoint

log = logging.getLogger("raytenant.http")


@api("Publish events to the tenant's stream", scope="events:write", body=schemas.EventsBody,
     answer=schemas.Published, status=201, errors={422: ("too_many_events",), 503: ("stream_unavailable",)})
async def publish_events(request: Request) -> JSONResponse:
    claims = authenticate(request, "events:write")
    runtime = runtime_of(request)
    items, _ = items_of(await parse_body(request, schemas.EventsBody))
    limit = runtime.settings.max_events_per_request
    if len(items) > limit:
        raise ApiError(422, "too_many_events", f"at most {limit} events per request")
    events = [item.model_dump() for item in items]
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


@api("Replay the tenant's events after a seq, oldest first", scope="events:read", query=schemas.ReplayQuery,
     answer=schemas.EventsPage, errors={410: ("events_expired",), 503: ("stream_unavailable",)})
async def replay_events(request: Request) -> JSONResponse:
    claims = authenticate(request, "events:read")
    runtime = runtime_of(request)
    query = parse_query(request, schemas.ReplayQuery)
    after, limit, flow_id = query.after, query.limit, query.flow_id
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


@api("The tenant's open connections across all replicas", scope="events:read", answer=schemas.Presence)
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
