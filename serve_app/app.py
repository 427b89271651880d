"""The Starlette application: every area's routes (serve_app/routes/, one module per area), the
error handlers, the rate limits and the replica's runtime in app.state."""
from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware

from serve_app.errors import EXCEPTION_HANDLERS
from serve_app.rate_limits import RateLimits
from serve_app.routes import admin, agents, console, costs, docs, events, flows, health, learning, llm, tenants, tokens
from serve_app.runtime import Runtime

AREAS = (health, events, tokens, costs, admin, tenants, llm, learning, agents, flows, console, docs)


def create_app(runtime: Runtime) -> Starlette:
    app = Starlette(
        routes=[route for area in AREAS for route in area.ROUTES],
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[Middleware(RateLimits)],
    )
    app.state.runtime = runtime
    return app
