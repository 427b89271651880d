"""The operator's routes for a tenant: its hard monthly cap and negotiated prices (docs/costs.md)
and its quotas and rate limits (docs/limits.md). Only the operator token reaches them; no tenant
token, whatever its scopes, can change or exceed what is set here."""
from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from datetime import datetime, timezone

from actors.ledger.prices import Price
from actors.substrate.limits import LimitsError
from actors.substrate.operations import ActorError
from serve_app.auth import JTI_PATTERN, bearer, valid_tenant
from serve_app.errors import ApiError
from serve_app.requests import int_param, read_json, runtime_of
from serve_app.routes.costs import _number, _object, ledger
from serve_app.signing_keys import public_view, rotate

MAX_USD = 1e9


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


async def put_budget(request: Request) -> JSONResponse:
    tenant = operator_tenant(request)
    payload = _object(await read_json(request))
    if "monthly_cap" not in payload:
        raise ApiError(422, "invalid_cap", "send {\"monthly_cap\": USD} (null lifts the cap)")
    cap = _number(payload, "monthly_cap")
    if cap is not None and not 0 <= cap <= MAX_USD:
        raise ApiError(422, "invalid_cap", f"monthly_cap must be between 0 and {MAX_USD:.0f} USD, or null")
    found = await ledger(request, "set_cap", tenant, cap)
    await runtime_of(request).audit.record("operator", "set_cap", tenant, "ok", monthly_cap=cap)
    return JSONResponse(found)


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
    found = await ledger(request, "set_override", tenant, model, Price(*values))
    await runtime_of(request).audit.record("operator", "set_price", tenant, "ok", model=model, price=values)
    return JSONResponse(found)


async def delete_price(request: Request) -> Response:
    tenant = operator_tenant(request)
    await ledger(request, "delete_override", tenant, _model(request))
    await runtime_of(request).audit.record("operator", "delete_price", tenant, "ok", model=_model(request))
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
    await runtime.audit.record("operator", "set_limits", tenant, "ok", overrides=payload)
    return JSONResponse({"tenant": tenant, "limits": limits.to_dict(), "overrides": payload})


async def get_limits(request: Request) -> JSONResponse:
    tenant = operator_tenant(request)
    runtime = runtime_of(request)
    overrides = await runtime.limits_store.get(tenant) or {}
    limits = await runtime.quotas.call("get_limits", tenant)
    usage = await runtime.quotas.call("usage", tenant)
    return JSONResponse({"tenant": tenant, "limits": limits, "overrides": overrides, "usage": usage})


def _issued_before(value: Any) -> float:
    """An ISO-8601 time or epoch seconds, not in the future."""
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
            when = (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()
        except (ValueError, OverflowError) as error:
            raise ApiError(422, "invalid_issued_before", "issued_before must be an ISO-8601 time") from error
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        when = float(value)
    else:
        raise ApiError(422, "invalid_issued_before", "issued_before must be an ISO-8601 time or epoch seconds")
    if not 0 <= when <= datetime.now(timezone.utc).timestamp() + 1.0:
        raise ApiError(422, "invalid_issued_before", "issued_before must be a past time after 1970")
    return when


async def revoke(request: Request) -> JSONResponse:
    """One token (`{"jti"}`) or every token of the tenant issued before a time (`{"issued_before"}`)."""
    tenant = operator_tenant(request)
    payload = _object(await read_json(request))
    if set(payload) not in ({"jti"}, {"issued_before"}):
        raise ApiError(422, "invalid_revocation", "send {\"jti\": ...} or {\"issued_before\": ...}")
    jti = payload.get("jti")
    if "jti" in payload and not (isinstance(jti, str) and JTI_PATTERN.fullmatch(jti)):
        raise ApiError(422, "invalid_jti", "jti must be the 32 hex digits of a token's id")
    before = _issued_before(payload["issued_before"]) if "issued_before" in payload else None
    runtime = runtime_of(request)
    try:
        found = await runtime.revocations.call("revoke", tenant, jti, before, runtime.tokens.max_ttl)
    except ActorError as error:
        await runtime.audit.record("operator", "revoke", tenant, f"refused:{error.code}", jti=jti, issued_before=before)
        raise
    await runtime.audit.record("operator", "revoke", tenant, "ok", jti=jti, issued_before=before)
    return JSONResponse(found, status_code=201)


async def list_revocations(request: Request) -> JSONResponse:
    tenant = operator_tenant(request)
    return JSONResponse({"tenant": tenant, **await runtime_of(request).revocations.call("list", tenant)})


async def rotate_keys(request: Request) -> JSONResponse:
    operator(request)
    runtime = runtime_of(request)
    payload = _object(await read_json(request))
    longest = runtime.tokens.max_ttl
    retire_after = payload.get("retire_after_seconds", longest)
    if isinstance(retire_after, bool) or not isinstance(retire_after, int) or not 0 <= retire_after <= 10 * longest:
        raise ApiError(422, "invalid_retire_after", f"retire_after_seconds must be an integer between 0 and {10 * longest}")
    key = await rotate(runtime.credentials, retire_after)
    await runtime.signing_keys.refresh()
    await runtime.audit.record("operator", "rotate_keys", None, "ok", kid=key["kid"], retire_after=retire_after)
    return JSONResponse(key, status_code=201)


async def list_keys(request: Request) -> JSONResponse:
    operator(request)
    now = datetime.now(timezone.utc).timestamp()
    return JSONResponse({"keys": [public_view(row, now) for row in await runtime_of(request).credentials.keys()]})


async def audit_log(request: Request) -> JSONResponse:
    """A page of the audit log, oldest first: `?after=<id>&limit=&tenant=`."""
    operator(request)
    after = int_param(request, "after", 0, high=2**62)
    limit = int_param(request, "limit", 100, low=1, high=1000)
    tenant = request.query_params.get("tenant")
    if tenant is not None and not valid_tenant(tenant):
        raise ApiError(422, "invalid_tenant", "tenant must be 1-128 characters of letters, digits and . _ : -")
    rows = await runtime_of(request).credentials.audit_page(after, limit, tenant)
    return JSONResponse({"entries": rows, "next_after": rows[-1]["id"] if rows else after})


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
