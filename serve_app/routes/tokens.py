"""Minting tenant tokens (operator only; docs/http-api.md)."""
from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from serve_app.auth import DEFAULT_SCOPES, bearer, minted_ids
from serve_app.contract import api
from serve_app.errors import ApiError
from serve_app.requests import parse_body, runtime_of
from serve_app.schemas import admin as schemas

log = logging.getLogger("raytenant.http")


@api("Mint a tenant token", operator=True, body=schemas.MintBody, answer=schemas.Minted, status=201,
     errors={403: ("tenant_suspended",), 404: ("unknown_tenant",), 422: ("invalid_ttl",),
             503: ("signing_key_unavailable",)})
async def mint_token(request: Request) -> JSONResponse:
    runtime = runtime_of(request)
    if not runtime.tokens.is_operator(bearer(request.headers.get("authorization"))):
        raise ApiError(401, "operator_token_required", "this route needs the operator token")
    body = await parse_body(request, schemas.MintBody)
    tenant, user, engagement, ttl = body.tenant, body.user, body.engagement, body.ttl_seconds
    scopes = list(DEFAULT_SCOPES) if body.scopes is None else body.scopes
    longest = runtime.tokens.max_ttl
    if ttl is not None and ttl > longest:
        raise ApiError(422, "invalid_ttl", f"ttl_seconds must be an integer between 1 and {longest}",
                       max_ttl_seconds=longest)
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
