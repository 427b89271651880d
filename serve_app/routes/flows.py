"""HTTP routes of flows (docs/agents.md#flows). The tenant always comes from the token; a flow of
another tenant is not found."""
from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from crews.flow_request import FlowRequestError, parse_corrections, parse_flow_request
from serve_app.errors import ApiError
from serve_app.requests import authenticate, int_param, read_json, runtime_of

FLOW_ID = re.compile(r"^[0-9a-f]{32}$")
STATUSES = ("queued", "initialized", "running", "completed", "failed", "cancelled")


def _flow_id(request: Request) -> str:
    flow_id = request.path_params["flow_id"]
    if not FLOW_ID.fullmatch(flow_id):
        raise ApiError(404, "flow_not_found", "no such flow for this tenant")
    return flow_id


def _refused(error: FlowRequestError) -> ApiError:
    return ApiError(422, error.code, str(error))


async def create(request: Request) -> JSONResponse:
    claims = authenticate(request, "flows:write")
    try:
        spec = parse_flow_request(await read_json(request))
    except FlowRequestError as error:
        raise _refused(error) from error
    flow = await runtime_of(request).flows.call("create", claims.tenant, spec)
    return JSONResponse(flow, status_code=202, headers={"Location": f"/v1/flows/{flow['flow_id']}"})


async def list_flows(request: Request) -> JSONResponse:
    claims = authenticate(request, "flows:read")
    status = request.query_params.get("status") or None
    if status is not None and status not in STATUSES:
        raise ApiError(422, "invalid_parameter", f"status must be one of {', '.join(STATUSES)}")
    limit = int_param(request, "limit", 50, low=1, high=500)
    flows = await runtime_of(request).flows.call("list", claims.tenant, status, limit)
    return JSONResponse({"flows": flows})


async def get(request: Request) -> JSONResponse:
    claims = authenticate(request, "flows:read")
    return JSONResponse(await runtime_of(request).flows.call("get", claims.tenant, _flow_id(request)))


async def cancel(request: Request) -> JSONResponse:
    claims = authenticate(request, "flows:write")
    return JSONResponse(await runtime_of(request).flows.call("cancel", claims.tenant, _flow_id(request)))


async def corrections(request: Request) -> JSONResponse:
    claims = authenticate(request, "flows:write")
    flow_id = _flow_id(request)
    try:
        items = parse_corrections(await read_json(request))
    except FlowRequestError as error:
        raise _refused(error) from error
    return JSONResponse(await runtime_of(request).flows.call("correct", claims.tenant, flow_id, items))


ROUTES = [
    Route("/v1/flows", create, methods=["POST"]),
    Route("/v1/flows", list_flows, methods=["GET"]),
    Route("/v1/flows/{flow_id}", get, methods=["GET"]),
    Route("/v1/flows/{flow_id}/cancel", cancel, methods=["POST"]),
    Route("/v1/flows/{flow_id}/corrections", corrections, methods=["POST"]),
]
