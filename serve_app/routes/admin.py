"""The operator's routes for a tenant: its hard monthly cap and negotiated prices (docs/costs.md)
and its quotas and rate limits (docs/limits.md). Only the operator token reaches them; no tenant
token, whatever its scopes, can change or exceed what is set here."""
from __future__ import annotations

from datetime import datetime, timezone

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from actors.ledger.prices import Price
from actors.substrate.limits import LimitsError
from actors.substrate.operations import ActorError
from serve_app.auth import bearer, valid_tenant
from serve_app.contract import api
from serve_app.errors import ApiError
from serve_app.requests import parse_body, parse_query, runtime_of
from serve_app.routes.costs import ledger
from serve_app.schemas import admin as schemas
from serve_app.signing_keys import public_view, rotate

TENANT_PATH = {422: ("invalid_tenant",)}


def operator(request: Request) -> None:
    if not runtime_of(request).tokens.is_operator(bearer(request.headers.get("authorization"))):
        raise ApiError(401, "operator_token_required", "this route needs the operator token")


def operator_tenant(request: Request) -> str:
    """The tenant named in the path, once the caller proved it holds the operator token."""
    operator(request)
    tenant = request.path_params["tenant"]
    if not valid_tenant(tenant):
        raise ApiError(422, "invalid_tenant", "tenant must be 1-128 characters of letters, digits and . _ : -")
    return tenant


@api("Set the tenant's hard monthly cap (null lifts it)", operator=True, body=schemas.CapBody,
     answer=schemas.Month, errors=TENANT_PATH)
async def put_budget(request: Request) -> JSONResponse:
    tenant = operator_tenant(request)
    cap = (await parse_body(request, schemas.CapBody)).monthly_cap
    found = await ledger(request).call("set_cap", tenant, cap)
    await runtime_of(request).audit.record("operator", "set_cap", tenant, "ok", monthly_cap=cap)
    return JSONResponse(found)


@api("The tenant's month: cap, budget and spend", operator=True, answer=schemas.Month, errors=TENANT_PATH)
async def get_budget(request: Request) -> JSONResponse:
    return JSONResponse(await ledger(request).call("month", operator_tenant(request)))


def _model(request: Request) -> str:
    model = request.path_params["model"]
    if not 0 < len(model) <= 200:
        raise ApiError(422, "invalid_model", "model must be a model name")
    return model


@api("Set a negotiated price of one model for the tenant", operator=True, body=schemas.PriceBody,
     answer=schemas.PriceOverride, errors={422: ("invalid_tenant", "invalid_model")})
async def put_price(request: Request) -> JSONResponse:
    tenant = operator_tenant(request)
    model = _model(request)
    body = await parse_body(request, schemas.PriceBody)
    values = [body.input_per_token, body.output_per_token, body.cached_per_token]
    found = await ledger(request).call("set_override", tenant, model, Price(*values))
    await runtime_of(request).audit.record("operator", "set_price", tenant, "ok", model=model, price=values)
    return JSONResponse(found)


@api("Delete the tenant's price for a model", operator=True, status=204,
     errors={404: ("override_not_found",), 422: ("invalid_tenant", "invalid_model")})
async def delete_price(request: Request) -> Response:
    tenant = operator_tenant(request)
    await ledger(request).call("delete_override", tenant, _model(request))
    await runtime_of(request).audit.record("operator", "delete_price", tenant, "ok", model=_model(request))
    return Response(status_code=204)


@api("Replace the tenant's limit overrides (limits not named take the defaults)", operator=True,
     body=schemas.LimitsBody, answer=schemas.LimitsAnswer, errors=TENANT_PATH)
async def put_limits(request: Request) -> JSONResponse:
    tenant = operator_tenant(request)
    payload = (await parse_body(request, schemas.LimitsBody)).model_dump(exclude_none=True)
    runtime = runtime_of(request)
    try:
        limits = runtime.settings.default_limits().with_overrides(payload)
    except LimitsError as error:
        raise ApiError(422, "invalid_limits", str(error)) from error
    try:
        await runtime.limits_store.put(tenant, payload)
    except Exception as error:  # noqa: BLE001 - nothing was stored
        raise ApiError(503, "storage_unavailable", "the limits could not be stored; nothing changed") from error
    await runtime.set_limits(tenant, payload)
    await runtime.audit.record("operator", "set_limits", tenant, "ok", overrides=payload)
    return JSONResponse({"tenant": tenant, "limits": limits.to_dict(), "overrides": payload})


@api("The tenant's limits, overrides and usage", operator=True, answer=schemas.LimitsAnswer, errors=TENANT_PATH)
async def get_limits(request: Request) -> JSONResponse:
    tenant = operator_tenant(request)
    runtime = runtime_of(request)
    overrides = await runtime.limits_store.get(tenant) or {}
    limits = await runtime.quotas.call("get_limits", tenant)
    usage = await runtime.quotas.call("usage", tenant)
    return JSONResponse({"tenant": tenant, "limits": limits, "overrides": overrides, "usage": usage})


@api("Revoke one token (`jti`) or every token issued before a time", operator=True, body=schemas.RevocationBody,
     answer=schemas.Revocations, status=201, errors=TENANT_PATH)
async def revoke(request: Request) -> JSONResponse:
    tenant = operator_tenant(request)
    body = await parse_body(request, schemas.RevocationBody)
    jti, before = body.jti, body.issued_before
    runtime = runtime_of(request)
    try:
        found = await runtime.revocations.call("revoke", tenant, jti, before, runtime.tokens.max_ttl)
    except ActorError as error:
        await runtime.audit.record("operator", "revoke", tenant, f"refused:{error.code}", jti=jti, issued_before=before)
        raise
    await runtime.audit.record("operator", "revoke", tenant, "ok", jti=jti, issued_before=before)
    return JSONResponse(found, status_code=201)


@api("The tenant's revocations", operator=True, answer=schemas.Revocations, errors=TENANT_PATH)
async def list_revocations(request: Request) -> JSONResponse:
    tenant = operator_tenant(request)
    return JSONResponse({"tenant": tenant, **await runtime_of(request).revocations.call("list", tenant)})


@api("Start signing with a new key; the old one retires after retire_after_seconds", operator=True,
     body=schemas.RotateBody, answer=schemas.SigningKey, status=201)
async def rotate_keys(request: Request) -> JSONResponse:
    operator(request)
    runtime = runtime_of(request)
    body = await parse_body(request, schemas.RotateBody)
    longest = runtime.tokens.max_ttl
    retire_after = longest if body.retire_after_seconds is None else body.retire_after_seconds
    if retire_after > 10 * longest:
        raise ApiError(422, "invalid_retire_after", f"retire_after_seconds must be an integer between 0 and {10 * longest}")
    key = await rotate(runtime.credentials, retire_after)
    await runtime.signing_keys.refresh()
    await runtime.audit.record("operator", "rotate_keys", None, "ok", kid=key["kid"], retire_after=retire_after)
    return JSONResponse(key, status_code=201)


@api("The signing keys (never their secrets)", operator=True, answer=schemas.SigningKeys)
async def list_keys(request: Request) -> JSONResponse:
    operator(request)
    now = datetime.now(timezone.utc).timestamp()
    return JSONResponse({"keys": [public_view(row, now) for row in await runtime_of(request).credentials.keys()]})


@api("A page of the audit log, oldest first", operator=True, query=schemas.AuditQuery, answer=schemas.AuditPage)
async def audit_log(request: Request) -> JSONResponse:
    operator(request)
    query = parse_query(request, schemas.AuditQuery)
    rows = await runtime_of(request).credentials.audit_page(query.after, query.limit, query.tenant)
    return JSONResponse({"entries": rows, "next_after": rows[-1]["id"] if rows else query.after})


ROUTES = [
    Route("/v1/admin/tenants/{tenant}/revocations", revoke, methods=["POST"]),
    Route("/v1/admin/tenants/{tenant}/revocations", list_revocations, methods=["GET"]),
    Route("/v1/admin/keys/rotate", rotate_keys, methods=["POST"]),
    Route("/v1/admin/keys", list_keys, methods=["GET"]),
    Route("/v1/admin/audit", audit_log, methods=["GET"]),
    Route("/v1/admin/tenants/{tenant}/limits", put_limits, methods=["PUT"]),
    Route("/v1/admin/tenants/{tenant}/limits", get_limits, methods=["GET"]),
    Route("/v1/admin/tenants/{tenant}/budget", put_budget, methods=["PUT"]),
    Route("/v1/admin/tenants/{tenant}/budget", get_budget, methods=["GET"]),
    Route("/v1/admin/tenants/{tenant}/prices/{model:path}", put_price, methods=["PUT"]),
    Route("/v1/admin/tenants/{tenant}/prices/{model:path}", delete_price, methods=["DELETE"]),
]
