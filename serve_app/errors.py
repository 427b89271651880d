"""One error shape for every HTTP failure: {"error": {"code": "...", "message": "..."}}."""
from __future__ import annotations

import logging
import math
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from actors.substrate.operations import ActorError, storage_error
from serve_app.schemas.base import BodyError

log = logging.getLogger("raytenant.http")

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    422: "invalid",
    429: "too_many_requests",
    503: "unavailable",
}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details


def error_response(status: int, code: str, message: str, **details: Any) -> JSONResponse:
    """The error body; a 429 or 503 whose details say `retry_after` (seconds) also carries the
    Retry-After header, in whole seconds and at least 1."""
    body: dict[str, Any] = {"code": code, "message": message}
    body.update(details)
    response = JSONResponse({"error": body}, status_code=status)
    wait = details.get("retry_after")
    if status in (429, 503) and isinstance(wait, (int, float)) and not isinstance(wait, bool):
        response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
    return response


async def api_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    """ApiError from a route, or an ActorError (same fields) refused by a shard."""
    assert isinstance(exc, (ApiError, ActorError))
    return error_response(exc.status, exc.code, exc.message, **exc.details)


async def body_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    """A refused body or query (serve_app/schemas/): 422 with the code its model names."""
    assert isinstance(exc, BodyError)
    return error_response(422, exc.code, exc.message)


async def http_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, _HTTP_CODES.get(exc.status_code, "http_error"), str(exc.detail))


async def internal_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """A database outage met by a route that reads or writes storage itself (tenants, keys,
    audit) is a 503 like the shards' (actors/substrate/operations.py `storage_error`); anything else is a
    bug, logged, and a 500."""
    answer = storage_error(exc)
    if answer is not None:
        log.warning("%s %s: %s", request.method, request.url.path, answer.code)
        return error_response(answer.status, answer.code, answer.message, **answer.details)
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "internal server error")


EXCEPTION_HANDLERS = {
    ApiError: api_error_handler,
    ActorError: api_error_handler,
    BodyError: body_error_handler,
    HTTPException: http_error_handler,
    Exception: internal_error_handler,
}
