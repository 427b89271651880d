"""HTTP routes of flows (docs/agents.md#flows). The tenant always comes from the token; a flow of
another tenant is not found."""
from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from serve_app.contract import api
from serve_app.errors import ApiError
from serve_app.requests import authenticate, parse_body, parse_query, runtime_of
from serve_app.schemas import flows as schemas

FLOW_ID = re.compile(r"^[0-9a-f]{32}$")
FLOW = {404: ("flow_not_found",), 503: ("flows_unavailable",)}


def _flow_id(request: Request) -> str:
    flow_id = request.path_params["flow_id"]
    if not FLOW_ID.fullmatch(flow_id):
        raise ApiError(404, "flow_not_found", "no such flow for this tenant")
    return flow_id


@api("Start a flow: a crew over the tenant's records, its progress streamed live", scope="flows:write",
     body=schemas.FlowBody, answer=schemas.Flow, status=202, errors={429: ("quota_exceeded",), 503: ("flows_unavailable",)})
async def create(request: Request) -> JSONResponse:
    claims = authenticate(request, "flows:write")
    spec = (await parse_body(request, schemas.FlowBody)).spec()
    flow = await runtime_of(request).flows.call("create", claims.tenant, spec)
    return JSONResponse(flow, status_code=202, headers={"Location": f"/v1/flows/{flow['flow_id']}"})


@api("The tenant's flows, newest first", scope="flows:read", query=schemas.FlowsQuery, answer=schemas.Flows)
async def list_flows(request: Request) -> JSONResponse:
    claims = authenticate(request, "flows:read")
    query = parse_query(request, schemas.FlowsQuery)
    flows = await runtime_of(request).flows.call("list", claims.tenant, query.status, query.limit)
    return JSONResponse({"flows": flows})


@api("A flow, its phases and results", scope="flows:read", answer=schemas.Flow, errors=FLOW)
async def get(request: Request) -> JSONResponse:
    claims = authenticate(request, "flows:read")
    return JSONResponse(await runtime_of(request).flows.call("get", claims.tenant, _flow_id(request)))


@api("Cancel a flow", scope="flows:write", answer=schemas.Flow, errors={**FLOW, 409: ("flow_finished",)})
async def cancel(request: Request) -> JSONResponse:
    claims = authenticate(request, "flows:write")
    return JSONResponse(await runtime_of(request).flows.call("cancel", claims.tenant, _flow_id(request)))


@api("Correct a flow's decisions; its agents learn and the flow's results are redone", scope="flows:write",
     body=schemas.CorrectionsBody, answer=schemas.Flow,
     errors={**FLOW, 409: ("phase_not_finished", "no_mapping", "flow_finished"),
             422: ("invalid_correction", "unknown_phase", "unknown_item", "uncorrectable_item", "unknown_source_field",
                   "unknown_target_field")})
async def corrections(request: Request) -> JSONResponse:
    claims = authenticate(request, "flows:write")
    flow_id = _flow_id(request)
    items = schemas.corrections_of(await parse_body(request, schemas.CorrectionsBody))
    return JSONResponse(await runtime_of(request).flows.call("correct", claims.tenant, flow_id, items))


ROUTES = [
    Route("/v1/flows", create, methods=["POST"]),
    Route("/v1/flows", list_flows, methods=["GET"]),
    Route("/v1/flows/{flow_id}", get, methods=["GET"]),
    Route("/v1/flows/{flow_id}/cancel", cancel, methods=["POST"]),
    Route("/v1/flows/{flow_id}/corrections", corrections, methods=["POST"]),
]
