"""Per-tenant request rates at the edge: an ASGI middleware in front of every tenant route.

Each request of a tenant token spends one token of its route class's bucket (actors/substrate/limits.py);
the tokens come from this replica's leased allotment (actors/quotas/client.py), so an admitted
request makes no actor call. Over the rate the answer is 429 `rate_limited`, naming the limit,
with Retry-After, before the route reads the body. Requests without a valid tenant token pass on
to their route, which answers 401; operator routes (/v1/admin/) are not limited.

Sockets over their tenant's connection cap are closed with 4029 (serve_app/websocket.py asks the
quota shard for a slot). A replica remembers a refusal for a moment (actors/quotas/client.py), and
while it does, the edge closes the tenant's new sockets itself.

The same middleware runs in two places. Inside the app (`RateLimits`) it sees every request,
whichever way it came. On a direct-ingress replica it also runs outside Ray Serve's own
per-request work (`edge_middlewares`, installed through Serve's HTTP callback,
RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH): profiling the replica under an aggressor showed
Serve's request ids, metrics and disconnect tasks costing about twice the app's whole handling of
a request, so a refusal there keeps a tenant hammering past its rate from taking the replica's
event loop from the others. A request checked at the edge is marked in its scope and is not
counted again inside.
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from actors.substrate.limits import ROUTE_CLASSES
from serve_app.auth import SUBPROTOCOL, AuthError, bearer, socket_token
from serve_app.errors import error_response

if TYPE_CHECKING:
    from serve_app.runtime import Runtime

# /v1/<segment> -> route class (ROUTE_CLASSES); the rest are "other".
SEGMENT_CLASSES = {"events": "events", "connections": "events", "costs": "costs", "llm": "llm",
                   "learning": "learning", "mappings": "learning", "agents": "agents", "topics": "agents",
                   "flows": "flows"}
assert set(SEGMENT_CLASSES.values()) <= set(ROUTE_CLASSES)
CHECKED = "raytenant.rate_checked"  # scope key: this request already spent its token
CLOSE_OVER_LIMIT = 4029


def route_class(path: str) -> str | None:
    """The route class whose rate a request spends, or None for routes that are not limited."""
    parts = path.split("/", 3)
    if len(parts) < 3 or parts[1] != "v1" or parts[2] in ("admin", "ws"):
        return None
    return SEGMENT_CLASSES.get(parts[2], "other")


async def refused_request(runtime: Runtime, scope: Scope, receive: Receive, send: Send, route: str) -> bool:
    """Spend the request's token of its route class; over the rate, answer 429 and return True."""
    token = bearer(Headers(scope=scope).get("authorization"))
    try:
        tenant = runtime.tokens.verify(token).tenant if token else None
    except AuthError:
        return False  # the route answers 401
    if tenant is None:
        return False
    wait = await runtime.quotas.admit(tenant, f"requests:{route}")
    if wait is None:
        return False
    response = error_response(429, "rate_limited", f"over this tenant's {route} request rate; "
                              f"retry after {wait:.3f} s", limit=f"requests:{route}", retry_after=round(wait, 3))
    await response(scope, receive, send)
    return True


async def refuse_socket(runtime: Runtime, websocket: WebSocket, slot: dict[str, Any]) -> None:
    """Close an accepted socket over its tenant's connection cap with 4029."""
    runtime.metrics.inc("raytenant_limit_refusals", limit="connections")
    await websocket.close(CLOSE_OVER_LIMIT, f"this tenant already holds {slot['connections']} of its "
                                            f"{slot['limit']} connections")


async def refused_socket(runtime: Runtime, scope: Scope, receive: Receive, send: Send) -> bool:
    """Close a socket whose tenant this replica knows to be at its connection cap; False when
    the socket must go on to the endpoint (which authenticates it and asks for a slot)."""
    token, by_protocol = socket_token(scope)
    try:
        tenant = runtime.tokens.verify(token).tenant
    except AuthError:
        return False
    slot = runtime.quotas.known_refusal(tenant)
    if slot is None:
        return False
    websocket = WebSocket(scope, receive, send)
    await websocket.accept(subprotocol=SUBPROTOCOL if by_protocol else None)
    await refuse_socket(runtime, websocket, slot)
    return True


class RateLimits:
    """Inside the app: every request not already checked at the edge."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = route_class(scope["path"]) if scope["type"] == "http" and not scope.get(CHECKED) else None
        if route is not None and await refused_request(scope["app"].state.runtime, scope, receive, send, route):
            return
        await self.app(scope, receive, send)


# The replica's runtime, for the edge: Serve builds the edge middleware before the app exists, in
# the same process (and, with user code on the replica's loop, the same event loop).
_edge_runtime: tuple[Runtime, asyncio.AbstractEventLoop] | None = None


def serve_at_edge(runtime: Runtime | None) -> None:
    """Called by the replica once its runtime started, on the loop its requests run on (None: the
    edge passes everything on again)."""
    global _edge_runtime
    _edge_runtime = None if runtime is None else (runtime, asyncio.get_running_loop())


class EdgeRateLimits:
    """Outside Serve's per-request work. Where no runtime serves this process (the Serve proxy), or
    the request runs on another loop than the runtime's, it passes the request on unchecked and
    the app's RateLimits checks it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime = _edge_runtime[0] if _edge_runtime is not None and asyncio.get_running_loop() is _edge_runtime[1] \
            else None
        if runtime is not None and scope["type"] == "http":
            route = route_class(scope["path"])
            if route is not None:
                scope[CHECKED] = True
                if await refused_request(runtime, scope, receive, send, route):
                    return
        elif runtime is not None and scope["type"] == "websocket" and scope["path"] == "/v1/ws":
            if await refused_socket(runtime, scope, receive, send):
                return
        await self.app(scope, receive, send)


def edge_middlewares() -> list[Middleware]:
    """Serve's HTTP callback (RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=serve_app.rate_limits:edge_middlewares)."""
    return [Middleware(EdgeRateLimits)]
