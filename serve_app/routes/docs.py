"""The contract: `GET /openapi.json` (OpenAPI 3.1, generated from the routes' declarations:
serve_app/contract.py) and `GET /docs`, Swagger UI from the files the swagger-ui-bundle-v2 package
ships (nothing is fetched from elsewhere). Public: the document holds no tenant data."""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import swagger_ui_bundle
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from serve_app.contract import openapi

HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'"}
PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>raytenant API</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script src="/docs/init.js"></script>
</body></html>
"""
INIT = 'window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true});\n'


def _version() -> str:
    try:
        return version("raytenant")
    except PackageNotFoundError:  # pragma: no cover - run from a checkout without installing
        return "0"


async def openapi_json(request: Request) -> JSONResponse:
    document = getattr(request.app.state, "openapi", None)
    if document is None:  # built once per replica, from the app's own routes
        document = request.app.state.openapi = openapi(request.app.routes, title="raytenant", version=_version())
    return JSONResponse(document)


async def docs(_request: Request) -> HTMLResponse:
    return HTMLResponse(PAGE, headers=HEADERS)


async def init_js(_request: Request) -> Response:
    return Response(INIT, media_type="text/javascript", headers=HEADERS)


ROUTES = [
    Route("/openapi.json", openapi_json),
    Route("/docs", docs),
    Route("/docs/init.js", init_js),
    Mount("/docs/static", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="swagger-ui"),
]
