"""The Starlette application: routes, error handlers and the replica's runtime in app.state."""
from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route, WebSocketRoute

from serve_app import (console_routes, routes, routes_admin, routes_agents, routes_costs, routes_flows, routes_learning,
                       routes_llm, routes_tenants)
from serve_app.errors import EXCEPTION_HANDLERS
from serve_app.rate_limits import RateLimits
from serve_app.runtime import Runtime
from serve_app.websocket import websocket_endpoint


def create_app(runtime: Runtime) -> Starlette:
    app = Starlette(
        routes=[
            Route("/healthz", routes.healthz),
            Route("/readyz", routes.readyz),
            Route("/v1/events", routes.publish_events, methods=["POST"]),
            Route("/v1/events", routes.replay_events, methods=["GET"]),
            Route("/v1/connections", routes.connections),
            Route("/v1/admin/tokens", routes.mint_token, methods=["POST"]),
            WebSocketRoute("/v1/ws", websocket_endpoint),
            *routes_costs.ROUTES,
            *routes_admin.ROUTES,
            *routes_tenants.ROUTES,
            *routes_llm.ROUTES,
            *routes_learning.ROUTES,
            *routes_agents.ROUTES,
            *routes_flows.ROUTES,
            *console_routes.ROUTES,
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[Middleware(RateLimits)],
    )
    app.state.runtime = runtime
    return app
