"""The operator's tenant routes: `/v1/admin/tenants` to create and list, `/v1/admin/tenants/{tenant}`
to show and delete, `.../suspend` and `.../resume`, `.../export` (JSON lines, streamed) and
`/v1/admin/tenants/import`. Only the operator token reaches them; each action is audited."""
from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from serve_app.contract import api
from serve_app.errors import ApiError
from serve_app.requests import parse_body, parse_query, runtime_of
from serve_app.routes.admin import TENANT_PATH, operator, operator_tenant
from serve_app.schemas import admin as schemas
from storage.tenants import ImportError_

MAX_IMPORT_BYTES = 256 * 1024 * 1024
NDJSON = "application/x-ndjson"


def _lifecycle(request: Request):
    return runtime_of(request).tenant_lifecycle


@api("Create a tenant", operator=True, body=schemas.TenantBody, answer=schemas.TenantRecord, status=201,
     errors={409: ("tenant_exists",)})
async def create_tenant(request: Request) -> JSONResponse:
    operator(request)
    name = (await parse_body(request, schemas.TenantBody)).tenant
    created = await _lifecycle(request).create(name)
    await runtime_of(request).audit.record("operator", "create_tenant", name, "ok")
    return JSONResponse(created, status_code=201)


@api("A page of tenants in name order, with their figures", operator=True, query=schemas.TenantsQuery,
     answer=schemas.TenantsPage)
async def list_tenants(request: Request) -> JSONResponse:
    operator(request)
    query = parse_query(request, schemas.TenantsQuery)
    found = await _lifecycle(request).page(query.after, query.limit)
    return JSONResponse({"tenants": found, "next_after": found[-1]["tenant"] if found else None})


@api("A tenant and its figures", operator=True, answer=schemas.TenantRecord,
     errors={**TENANT_PATH, 404: ("unknown_tenant",)})
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


@api("Suspend a tenant: its tokens are refused, sockets closed, flows parked", operator=True, answer=schemas.TenantRecord,
     errors={**TENANT_PATH, 404: ("unknown_tenant",)})
async def suspend_tenant(request: Request) -> JSONResponse:
    return await _act(request, "suspend")


@api("Resume a suspended tenant", operator=True, answer=schemas.TenantRecord,
     errors={**TENANT_PATH, 404: ("unknown_tenant",)})
async def resume_tenant(request: Request) -> JSONResponse:
    return await _act(request, "resume")


@api("Delete a tenant and purge all its data", operator=True, answer=schemas.TenantRecord,
     errors={**TENANT_PATH, 404: ("unknown_tenant",), 409: ("flows_still_running",)})
async def delete_tenant(request: Request) -> JSONResponse:
    return await _act(request, "delete")


@api("Export a tenant's data as JSON lines (streamed)", operator=True, media_type=NDJSON, answer=list[dict[str, Any]],
     errors={**TENANT_PATH, 404: ("unknown_tenant",)})
async def export_tenant(request: Request) -> StreamingResponse:
    name = operator_tenant(request)
    lines = await _lifecycle(request).export(name)
    await runtime_of(request).audit.record("operator", "export_tenant", name, "ok")
    return StreamingResponse(lines, media_type=NDJSON,
                             headers={"Content-Disposition": f'attachment; filename="{name}.jsonl"'})


@api("Import an export (JSON lines) as a new tenant, all or nothing", operator=True, takes=NDJSON,
     answer=schemas.Imported, status=201, errors={409: ("tenant_exists",), 413: ("payload_too_large",), 422: ("invalid_import",)})
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
