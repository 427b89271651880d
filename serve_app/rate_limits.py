"""Per-tenant request rates at the edge: an ASGI middleware in front of every tenant route.

Each request of a tenant token spends one token of its route class's bucket (actors/limits.py);
the tokens come from this replica's leased allotment (actors/quota_client.py), so an admitted
request makes no actor call. Over the rate the answer is 429 `rate_limited`, naming the limit,
with Retry-After, before the route reads the body. Requests without a valid tenant token pass on
to their route, which answers 401; operator routes (/v1/admin/) are not limited.
"""
from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from actors.limits import ROUTE_CLASSES
from serve_app.auth import AuthError, bearer
from serve_app.errors import error_response

# /v1/<segment> -> route class (ROUTE_CLASSES); the rest are "other".
SEGMENT_CLASSES = {"events": "events", "connections": "events", "costs": "costs", "llm": "llm",
                   "learning": "learning", "mappings": "learning", "agents": "agents", "topics": "agents",
                   "flows": "flows"}
assert set(SEGMENT_CLASSES.values()) <= set(ROUTE_CLASSES)


def route_class(path: str) -> str | None:
    """The route class whose rate a request spends, or None for routes that are not limited."""
    parts = path.split("/", 3)
    if len(parts) < 3 or parts[1] != "v1" or parts[2] in ("admin", "ws"):
        return None
    return SEGMENT_CLASSES.get(parts[2], "other")


class RateLimits:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = route_class(scope["path"])
        runtime = scope["app"].state.runtime if route is not None else None
        if runtime is not None:
            token = bearer(Headers(scope=scope).get("authorization"))
            try:
                tenant = runtime.tokens.verify(token).tenant if token else None
            except AuthError:
                tenant = None  # the route answers 401
            if tenant is not None:
                name = f"requests:{route}"
                wait = await runtime.quotas.admit(tenant, name)
                if wait is not None:
                    response = error_response(429, "rate_limited", f"over this tenant's {route} request rate; "
                                              f"retry after {wait:.3f} s", limit=name, retry_after=round(wait, 3))
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)

