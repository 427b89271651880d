"""Minting tenant tokens (operator only; docs/http-api.md)."""
from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from serve_app.auth import DEFAULT_SCOPES, bearer, minted_ids, valid_tenant
from serve_app.errors import ApiError
from serve_app.requests import read_json, runtime_of

log = logging.getLogger("raytenant.http")


async def mint_token(request: Request) -> JSONResponse:
    runtime = runtime_of(request)
    if not runtime.tokens.is_operator(bearer(request.headers.get("authorization"))):
        raise ApiError(401, "operator_token_required", "this route needs the operator token")
    payload = await read_json(request)
    if not isinstance(payload, dict):
        raise ApiError(422, "invalid_body", "send a JSON object")
    tenant = payload.get("tenant")
    if not valid_tenant(tenant):
        raise ApiError(422, "invalid_tenant", "tenant must be 1-128 characters of letters, digits and . _ : -")
    scopes = payload.get("scopes", list(DEFAULT_SCOPES))
    ttl = payload.get("ttl_seconds")
    user, engagement = payload.get("user"), payload.get("engagement")
    if not (isinstance(scopes, list) and scopes and all(isinstance(s, str) for s in scopes)):
        raise ApiError(422, "invalid_scopes", "scopes must be a non-empty list of strings")
    longest = runtime.tokens.max_ttl
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 < ttl <= longest):
        raise ApiError(422, "invalid_ttl", f"ttl_seconds must be an integer between 1 and {longest}",
                       max_ttl_seconds=longest)
    if any(v is not None and not (isinstance(v, str) and 0 < len(v) <= 200 and v.isprintable())
           for v in (user, engagement)):
        raise ApiError(422, "invalid_claims", "user and engagement must be 1-200 printable characters")
    await runtime.tenant_lifecycle.for_token(tenant)  # 404 unknown (when not created on first mint), 403 suspended
    try:
        token, exp = runtime.tokens.mint(tenant, user=user, engagement=engagement, scopes=scopes, ttl=ttl)
    except LookupError as error:  # no usable signing key and legacy tokens refused
        raise ApiError(503, "signing_key_unavailable", str(error)) from error
    jti, kid = minted_ids(token)
    log.info("operator minted a token for tenant %s", tenant)
    await runtime.audit.record("operator", "mint_token", tenant, "ok", jti=jti, kid=kid, user=user,
                               scopes=list(scopes), expires_at=exp)
    return JSONResponse({"token": token, "tenant": tenant, "expires_at": exp, "jti": jti, "kid": kid},
                        status_code=201)


ROUTES = [Route("/v1/admin/tokens", mint_token, methods=["POST"])]
