"""The operator's tenant routes: `/v1/admin/tenants` to create and list, `/v1/admin/tenants/{tenant}`
to show and delete, `.../suspend` and `.../resume`, `.../export` (JSON lines, streamed) and
`/v1/admin/tenants/import`. Only the operator token reaches them; each action is audited."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from serve_app.auth import valid_tenant
from serve_app.errors import ApiError
from serve_app.requests import int_param, read_json, runtime_of
from serve_app.routes.admin import operator, operator_tenant
from storage.tenants import ImportError_

MAX_IMPORT_BYTES = 256 * 1024 * 1024
NDJSON = "application/x-ndjson"


def _lifecycle(request: Request):
    return runtime_of(request).tenant_lifecycle


async def create_tenant(request: Request) -> JSONResponse:
    operator(request)
    payload = await read_json(request)
    name = payload.get("tenant") if isinstance(payload, dict) else None
    if not isinstance(payload, dict) or set(payload) != {"tenant"} or not valid_tenant(name):
        raise ApiError(422, "invalid_tenant", "send {\"tenant\": name}: 1-128 characters of letters, digits and . _ : -")
    created = await _lifecycle(request).create(name)
    await runtime_of(request).audit.record("operator", "create_tenant", name, "ok")
    return JSONResponse(created, status_code=201)


async def list_tenants(request: Request) -> JSONResponse:
    """A page of tenants in name order, with their figures: `?after=<name>&limit=`."""
    operator(request)
    after = request.query_params.get("after", "")
    if after and not valid_tenant(after):
        raise ApiError(422, "invalid_parameter", "after must be a tenant name")
    found = await _lifecycle(request).page(after, int_param(request, "limit", 100, low=1, high=500))
    return JSONResponse({"tenants": found, "next_after": found[-1]["tenant"] if found else None})


async def show_tenant(request: Request) -> JSONResponse:
    name = operator_tenant(request)
    found = await _lifecycle(request).show([name])
    if not found:
        raise ApiError(404, "unknown_tenant", f"no tenant {name!r}")
    return JSONResponse(found[0])


async def _act(request: Request, action: str) -> JSONResponse:
    name = operator_tenant(request)
    runtime = runtime_of(request)
    try:
        found = await getattr(_lifecycle(request), action)(name)
    except ApiError as error:
        await runtime.audit.record("operator", f"{action}_tenant", name, f"refused:{error.code}")
        raise
    await runtime.audit.record("operator", f"{action}_tenant", name, "ok")
    return JSONResponse(found)


async def suspend_tenant(request: Request) -> JSONResponse:
    return await _act(request, "suspend")


async def resume_tenant(request: Request) -> JSONResponse:
    return await _act(request, "resume")


async def delete_tenant(request: Request) -> JSONResponse:
    return await _act(request, "delete")


async def export_tenant(request: Request) -> StreamingResponse:
    name = operator_tenant(request)
    lines = await _lifecycle(request).export(name)
    await runtime_of(request).audit.record("operator", "export_tenant", name, "ok")
    return StreamingResponse(lines, media_type=NDJSON,
                             headers={"Content-Disposition": f'attachment; filename="{name}.jsonl"'})


async def import_tenant(request: Request) -> JSONResponse:
    """An export (JSON lines) into this deployment, where the tenant must not exist: all or nothing."""
    operator(request)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_IMPORT_BYTES:
            raise ApiError(413, "payload_too_large", f"an import over {MAX_IMPORT_BYTES} bytes")
    runtime = runtime_of(request)
    try:
        found = await _lifecycle(request).import_lines(bytes(body).splitlines())
    except ImportError_ as error:
        raise ApiError(422, "invalid_import", str(error)[:500]) from error
    except FileExistsError as error:
        raise ApiError(409, "tenant_exists", f"tenant {error.args[0]!r} already exists; delete it first") from error
    await runtime.audit.record("operator", "import_tenant", found["tenant"], "ok", rows=found["rows"])
    return JSONResponse(found, status_code=201)


ROUTES = [
    Route("/v1/admin/tenants", create_tenant, methods=["POST"]),
    Route("/v1/admin/tenants", list_tenants, methods=["GET"]),
    Route("/v1/admin/tenants/import", import_tenant, methods=["POST"]),
    Route("/v1/admin/tenants/{tenant}", show_tenant, methods=["GET"]),
    Route("/v1/admin/tenants/{tenant}", delete_tenant, methods=["DELETE"]),
    Route("/v1/admin/tenants/{tenant}/suspend", suspend_tenant, methods=["POST"]),
    Route("/v1/admin/tenants/{tenant}/resume", resume_tenant, methods=["POST"]),
    Route("/v1/admin/tenants/{tenant}/export", export_tenant, methods=["GET"]),
]
