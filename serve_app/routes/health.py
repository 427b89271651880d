"""Liveness and readiness."""
from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from serve_app.contract import api
from serve_app.requests import runtime_of
from serve_app.schemas.base import Answer


class Health(Answer):
    status: str


@api("Liveness: the replica answers", answer=Health)
async def healthz(_request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


@api("Readiness: the replica reaches the event stream", answer=Health, errors={503: ("not_ready",)})
async def readyz(request: Request) -> JSONResponse:
    runtime = runtime_of(request)
    try:
        await asyncio.wait_for(runtime.hub.head("_readyz"), 5.0)
    except Exception as error:  # noqa: BLE001 - any failure means not ready
        return JSONResponse(
            {"status": "unavailable", "error": {"code": "not_ready", "message": str(error)[:200]}}, status_code=503
        )
    return JSONResponse({"status": "ready", "replica": runtime.replica_id})


ROUTES = [Route("/healthz", healthz), Route("/readyz", readyz)]
