"""The web console (serve_app/console/: plain HTML, CSS and JavaScript, no build step) and the
sample data set it starts flows with. Public: the page holds no data until a tenant token is
entered, and the sample is fictional."""
from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from crews.samples import sample_inventory
from serve_app.contract import api

CONSOLE = Path(__file__).parent.parent / "console"
HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "Content-Security-Policy": "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:"}


async def index(request: Request) -> FileResponse:
    return FileResponse(CONSOLE / "index.html", headers=HEADERS)


@api("The fictional inventory the console starts flows with")
async def sample(request: Request) -> JSONResponse:
    return JSONResponse(sample_inventory())


ROUTES = [
    Route("/", index),
    Route("/v1/samples/inventory", sample),
    Mount("/console", StaticFiles(directory=CONSOLE), name="console"),
]
