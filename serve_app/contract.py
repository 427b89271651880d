"""The HTTP contract: what each route takes and answers, declared next to the route with `@api`,
and the OpenAPI 3.1 document generated from those declarations and the pydantic models they name
(`GET /openapi.json`, rendered at `GET /docs`).

A declaration names the route's scope (or that it takes the operator token), its body and query
models, its answer and status, and the error codes the route itself raises. The codes a body can be
refused with come from the body's models (serve_app/schemas/base.py); those every route shares
(tokens, scopes, rate limits, strict JSON, storage outages) are added here, so the document lists
every code a client can get without each route repeating them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

from pydantic import BaseModel
from starlette.routing import BaseRoute, Route, WebSocketRoute

from serve_app.schemas.base import adapter, codes_in

Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])
REF = "#/components/schemas/{model}"

TENANT_AUTH = ("missing_token", "invalid_token", "token_expired", "token_revoked", "key_retired")
STRICT_JSON_400 = ("malformed_json", "too_deep")
STRICT_JSON_422 = ("invalid_number", "invalid_string")
OUTAGES = ("storage_unavailable", "shard_fenced")

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["code", "message"],
        "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        "additionalProperties": True,
    }},
}


@dataclass(frozen=True)
class Operation:
    summary: str
    scope: str | None = None  # the tenant token's scope the route needs
    operator: bool = False  # the route takes the operator token instead
    body: Any = None  # a pydantic model or annotation (serve_app/schemas/)
    query: type[BaseModel] | None = None
    answer: Any = None
    status: int = 200
    media_type: str = "application/json"
    takes: str | None = None  # a body that is not JSON: its media type (the tenant import's JSON lines)
    errors: dict[int, tuple[str, ...]] = field(default_factory=dict)

    def error_codes(self) -> dict[int, set[str]]:
        """Every status and code this route can answer with."""
        found: dict[int, set[str]] = {}

        def add(status: int, *codes: str) -> None:
            found.setdefault(status, set()).update(codes)

        if self.scope is not None:
            add(401, *TENANT_AUTH)
            add(403, "forbidden", "tenant_suspended")
            add(429, "rate_limited")
        if self.operator:
            add(401, "operator_token_required")
        if self.body is not None:
            add(400, *STRICT_JSON_400)
            add(413, "payload_too_large")
            add(422, *STRICT_JSON_422, *codes_in(self.body))
        if self.query is not None:
            add(422, *codes_in(self.query) - {"unknown_field"})
        add(503, *OUTAGES)
        for status, codes in self.errors.items():
            add(status, *codes)
        return found


def api(summary: str, **declared: Any) -> Callable[[Endpoint], Endpoint]:
    """Declare a route's contract; the route itself still authenticates and parses (explicitly)."""

    def declare(endpoint: Endpoint) -> Endpoint:
        endpoint.operation = Operation(summary, **declared)  # type: ignore[attr-defined]
        return endpoint

    return declare


class _Schemas:
    """components.schemas: each model once, under its name."""

    def __init__(self) -> None:
        self.found: dict[str, Any] = {"Error": ERROR_SCHEMA}

    def of(self, annotation: Any) -> dict[str, Any]:
        schema = adapter(annotation).json_schema(ref_template=REF)
        for name, definition in schema.pop("$defs", {}).items():
            known = self.found.setdefault(name, definition)
            if known != definition:
                raise ValueError(f"two different schemas are named {name}")
        return schema


def _path(route: Route) -> str:
    """Starlette's `{model:path}` is OpenAPI's `{model}`."""
    path = route.path
    for name in route.param_convertors:
        path = path.replace(f"{{{name}:path}}", f"{{{name}}}")
    return path


def _tag(path: str) -> str:
    """The area a route belongs to: `/v1/admin/tenants/...` is admin, `/healthz` is health."""
    parts = path.strip("/").split("/")
    return parts[1] if parts[0] == "v1" and len(parts) > 1 else "health"


def _operation(route: Route, method: str, operation: Operation, schemas: _Schemas) -> dict[str, Any]:
    document: dict[str, Any] = {
        "summary": operation.summary,
        "operationId": f"{method}_{route.name}",
        "tags": [_tag(route.path)],
        "parameters": [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                       for name in route.param_convertors],
    }
    if operation.scope is not None:
        document["security"] = [{"tenantToken": [operation.scope]}]
        document["x-scope"] = operation.scope
    elif operation.operator:
        document["security"] = [{"operatorToken": []}]
    else:
        document["security"] = []
    if operation.query is not None:
        properties = schemas.of(operation.query).get("properties", {})
        document["parameters"] += [{"name": name, "in": "query", "required": False, "schema": schema}
                                   for name, schema in properties.items()]
    if operation.body is not None:
        document["requestBody"] = {"required": True,
                                   "content": {"application/json": {"schema": schemas.of(operation.body)}}}
    elif operation.takes is not None:
        document["requestBody"] = {"required": True, "content": {operation.takes: {"schema": {"type": "string"}}}}
    answer: dict[str, Any] = {"description": operation.summary}
    if operation.status != 204:
        schema = schemas.of(operation.answer) if operation.answer is not None else {}
        answer["content"] = {operation.media_type: {"schema": schema}}
    responses: dict[str, Any] = {str(operation.status): answer}
    for status, codes in sorted(operation.error_codes().items()):
        responses[str(status)] = {
            "description": "Error codes: " + ", ".join(f"`{code}`" for code in sorted(codes)),
            "content": {"application/json": {"schema": {"$ref": REF.format(model="Error")}}},
        }
    responses["default"] = {"description": "Any other failure, in the same shape",
                            "content": {"application/json": {"schema": {"$ref": REF.format(model="Error")}}}}
    document["responses"] = responses
    return document


def openapi(routes: list[BaseRoute], *, title: str, version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every declared route."""
    schemas = _Schemas()
    paths: dict[str, Any] = {}
    sockets = []
    for route in routes:
        if isinstance(route, WebSocketRoute):
            sockets.append(route.path)
            continue
        operation = getattr(getattr(route, "endpoint", None), "operation", None)
        if not isinstance(route, Route) or operation is None:
            continue
        for method in sorted((route.methods or set()) - {"HEAD"}):
            paths.setdefault(_path(route), {})[method.lower()] = _operation(route, method.lower(), operation, schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version,
                 "description": "Tenant routes take a tenant token (`Authorization: Bearer`) with the scope each "
                                "names; the tenant always comes from the token. Admin routes take the operator "
                                "token. WebSocket: " + ", ".join(sockets) + " (docs/websocket-protocol.md)."},
        "paths": paths,
        "components": {
            "schemas": schemas.found,
            "securitySchemes": {
                "tenantToken": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                                "description": "A tenant token; its scopes bound what it may do"},
                "operatorToken": {"type": "http", "scheme": "bearer", "description": "The deployment's operator token"},
            },
        },
    }
