"""The operator's routes for a tenant: its hard monthly cap and negotiated prices (docs/costs.md)
and its quotas and rate limits (docs/limits.md). Only the operator token reaches them; no tenant
token, whatever its scopes, can change or exceed what is set here."""
from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from actors.limits import LimitsError
from actors.prices import Price
from serve_app.auth import bearer, valid_tenant
from serve_app.errors import ApiError
from serve_app.routes import read_json, runtime_of
from serve_app.routes_costs import _number, _object, ledger

MAX_USD = 1e9


def operator_tenant(request: Request) -> str:
    """The tenant named in the path, once the caller proved it holds the operator token."""
    if not runtime_of(request).tokens.is_operator(bearer(request.headers.get("authorization"))):
        raise ApiError(401, "operator_token_required", "this route needs the operator token")
    tenant = request.path_params["tenant"]
    if not valid_tenant(tenant):
        raise ApiError(422, "invalid_tenant", "tenant must be 1-128 characters of letters, digits and . _ : -")
    return tenant


async def put_budget(request: Request) -> JSONResponse:
    tenant = operator_tenant(request)
    payload = _object(await read_json(request))
    if "monthly_cap" not in payload:
        raise ApiError(422, "invalid_cap", "send {\"monthly_cap\": USD} (null lifts the cap)")
    cap = _number(payload, "monthly_cap")
    if cap is not None and not 0 <= cap <= MAX_USD:
        raise ApiError(422, "invalid_cap", f"monthly_cap must be between 0 and {MAX_USD:.0f} USD, or null")
    return JSONResponse(await ledger(request, "set_cap", tenant, cap))


async def get_budget(request: Request) -> JSONResponse:
    return JSONResponse(await ledger(request, "month", operator_tenant(request)))


def _model(request: Request) -> str:
    model = request.path_params["model"]
    if not 0 < len(model) <= 200:
        raise ApiError(422, "invalid_model", "model must be a model name")
    return model


async def put_price(request: Request) -> JSONResponse:
    tenant = operator_tenant(request)
    model = _model(request)
    payload = _object(await read_json(request))
    values: list[Any] = [_number(payload, name) for name in ("input_per_token", "output_per_token", "cached_per_token")]
    if values[0] is None or values[1] is None or any(v is not None and not 0 <= v < 1 for v in values):
        raise ApiError(422, "invalid_price", "input_per_token and output_per_token are required USD per token in [0, 1)")
    return JSONResponse(await ledger(request, "set_override", tenant, model, Price(*values)))


async def delete_price(request: Request) -> Response:
    tenant = operator_tenant(request)
    await ledger(request, "delete_override", tenant, _model(request))
    return Response(status_code=204)


async def put_limits(request: Request) -> JSONResponse:
    """Replace the tenant's overrides: fields not named take the deployment's defaults."""
    tenant = operator_tenant(request)
    payload = _object(await read_json(request))
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
    return JSONResponse({"tenant": tenant, "limits": limits.to_dict(), "overrides": payload})


async def get_limits(request: Request) -> JSONResponse:
    tenant = operator_tenant(request)
    runtime = runtime_of(request)
    overrides = await runtime.limits_store.get(tenant) or {}
    limits = await runtime.quotas.call("get_limits", tenant)
    usage = await runtime.quotas.call("usage", tenant)
    return JSONResponse({"tenant": tenant, "limits": limits, "overrides": overrides, "usage": usage})


ROUTES = [
    Route("/v1/admin/tenants/{tenant}/limits", put_limits, methods=["PUT"]),
    Route("/v1/admin/tenants/{tenant}/limits", get_limits, methods=["GET"]),
    Route("/v1/admin/tenants/{tenant}/budget", put_budget, methods=["PUT"]),
    Route("/v1/admin/tenants/{tenant}/budget", get_budget, methods=["GET"]),
    Route("/v1/admin/tenants/{tenant}/prices/{model:path}", put_price, methods=["PUT"]),
    Route("/v1/admin/tenants/{tenant}/prices/{model:path}", delete_price, methods=["DELETE"]),
]
