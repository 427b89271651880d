"""What every route reads from its request: the replica's runtime, the caller's verified claims,
its body (strict JSON, then a pydantic model: serve_app/schemas/) and its query parameters."""
from __future__ import annotations

import logging
from typing import Any, TypeVar

from starlette.requests import Request

from serve_app.auth import AuthError, Claims, bearer
from serve_app.errors import ApiError
from serve_app.runtime import Runtime
from serve_app.schemas.base import Query, validate
from storage import strict_json

log = logging.getLogger("raytenant.http")


def runtime_of(request: Request) -> Runtime:
    return request.app.state.runtime


def authenticate(request: Request, scope: str) -> Claims:
    runtime = runtime_of(request)
    try:
        claims = runtime.tokens.verify(bearer(request.headers.get("authorization")))
    except AuthError as error:
        if error.claims is not None:  # a revoked token: whose attempt it was goes to the audit log
            runtime.audit.refused(error.claims, error.code, request.url.path)
        raise ApiError(error.status, error.code, error.message) from error
    if not claims.allows(scope):
        log.warning("tenant %s user %s refused: scope %s", claims.tenant, claims.user, scope)
        raise ApiError(403, "forbidden", f"the token lacks the {scope} scope")
    return claims


async def read_json(request: Request) -> Any:
    limit = runtime_of(request).settings.max_body_bytes
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise ApiError(413, "payload_too_large", f"request body over {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, "payload_too_large", f"request body over {limit} bytes")
    try:
        return strict_json.loads(body)
    except strict_json.StrictJSONError as error:
        status = 400 if error.code in ("malformed_json", "too_deep") else 422
        raise ApiError(status, error.code, f"the request body is not strict JSON: {error.message}") from error


async def parse_body(request: Request, annotation: Any) -> Any:
    """The body as `annotation`; a refusal (BodyError) is answered 422 with the code its model
    names for the first bad value."""
    return validate(annotation, await read_json(request))


QueryModel = TypeVar("QueryModel", bound=Query)


def parse_query(request: Request, model: type[QueryModel]) -> QueryModel:
    """The query parameters as `model` (an empty value is an absent one); refused like a body."""
    return validate(model, {name: value for name, value in request.query_params.items() if value != ""})
