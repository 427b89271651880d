"""HTTP routes of the learning engine and field mapping (docs/learning.md). Tenant from the token."""
from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from crews.field_mapping import correction, map_fields
from crews.field_matcher import Field, SchemaError
from serve_app.errors import ApiError
from serve_app.requests import authenticate, read_json, runtime_of

MAX_ITEMS = 1_000


def _object(payload: Any, what: str = "the body") -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise ApiError(422, "invalid_body", f"{what} must be a JSON object")
    return payload


def _context(payload: dict[str, Any], where: str = "") -> dict[str, Any]:
    context = payload.get("context")
    if not isinstance(context, dict) or not context:
        raise ApiError(422, "invalid_context", f"{where}context must be a non-empty JSON object")
    return context


def _required(payload: dict[str, Any], name: str, where: str) -> Any:
    if payload.get(name) is None:
        raise ApiError(422, f"missing_{name}", f"{where}{name} is required")
    return payload[name]


def _items(payload: Any, key: str) -> tuple[list[dict[str, Any]], bool]:
    """One item, or {key: [...]} with 1-1,000 items; returns (items, was_single)."""
    payload = _object(payload)
    if key not in payload:
        return [payload], True
    items = payload[key]
    if not isinstance(items, list) or not 0 < len(items) <= MAX_ITEMS:
        raise ApiError(422, f"invalid_{key}", f"{key} must be a list of 1-{MAX_ITEMS} objects")
    return [_object(item, f"{key}[{i}]") for i, item in enumerate(items)], False


async def learn_corrections(request: Request) -> JSONResponse:
    claims = authenticate(request, "learning:write")
    items, single = _items(await read_json(request), "corrections")
    batch = [
        {"type": "correction", "original": _required(item, "original", f"corrections[{i}]."),
         "corrected": _required(item, "corrected", f"corrections[{i}]."), "context": _context(item, f"corrections[{i}].")}
        for i, item in enumerate(items)
    ]
    results = await runtime_of(request).learning.call("learn", claims.tenant, batch)
    return JSONResponse(results[0] if single else {"patterns": results}, status_code=201)


async def learn_successes(request: Request) -> JSONResponse:
    claims = authenticate(request, "learning:write")
    items, single = _items(await read_json(request), "successes")
    batch = [{"type": "success", "result": _required(item, "result", f"successes[{i}]."),
              "context": _context(item, f"successes[{i}].")} for i, item in enumerate(items)]
    results = await runtime_of(request).learning.call("learn", claims.tenant, batch)
    return JSONResponse(results[0] if single else {"patterns": results}, status_code=201)


def _threshold(payload: dict[str, Any]) -> float | None:
    value = payload.get("threshold")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ApiError(422, "invalid_threshold", "threshold must be in (0, 1]")
    return float(value)


def _limit(payload: dict[str, Any]) -> int | None:
    value = payload.get("limit")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 50:
        raise ApiError(422, "invalid_limit", "limit must be an integer in 1-50")
    return value


async def recommendations(request: Request) -> JSONResponse:
    claims = authenticate(request, "learning:read")
    payload = _object(await read_json(request))
    found = await runtime_of(request).learning.call(
        "recommendations", claims.tenant, _context(payload), _threshold(payload), _limit(payload)
    )
    return JSONResponse({"recommendations": found})


async def feedback(request: Request) -> JSONResponse:
    claims = authenticate(request, "learning:write")
    payload = _object(await read_json(request))
    pattern_id = payload.get("pattern_id")
    if not isinstance(pattern_id, str) or not 0 < len(pattern_id) <= 64:
        raise ApiError(422, "invalid_pattern_id", "pattern_id must be a pattern's id")
    accepted = payload.get("accepted")
    if not isinstance(accepted, bool):
        raise ApiError(422, "invalid_accepted", "accepted must be true or false")
    return JSONResponse(await runtime_of(request).learning.call("feedback", claims.tenant, pattern_id, accepted))


async def map_source_fields(request: Request) -> JSONResponse:
    """Map source to target fields, applying the tenant's corrections (exact, synonyms, similar)."""
    claims = authenticate(request, "learning:read")
    payload = _object(await read_json(request))
    try:
        result = await map_fields(runtime_of(request).learning.call, claims.tenant, payload.get("source_schema"),
                                  payload.get("target_schema"), _source_name(payload))
    except SchemaError as error:
        raise ApiError(422, "invalid_schema", str(error)) from error
    return JSONResponse(result)


def _source_name(payload: dict[str, Any]) -> str | None:
    name = payload.get("source_name")
    if name is not None and (not isinstance(name, str) or len(name) > 200):
        raise ApiError(422, "invalid_source_name", "source_name must be a string of at most 200 characters")
    return name


async def correct_mapping(request: Request) -> JSONResponse:
    """A user's correction of one proposed mapping, learned in the matcher's context shape;
    `target_field: null` teaches that the source field has no counterpart."""
    claims = authenticate(request, "learning:write")
    payload = _object(await read_json(request))
    source = payload.get("source_field")
    if not isinstance(source, str) or not 0 < len(source) <= 200:
        raise ApiError(422, "invalid_source_field", "source_field must be a field name")
    if "target_field" not in payload:
        raise ApiError(422, "invalid_target_field", "target_field must be a field name, or null for no counterpart")
    target = payload["target_field"]
    if target is not None and (not isinstance(target, str) or not 0 < len(target) <= 200):
        raise ApiError(422, "invalid_target_field", "target_field must be a field name, or null for no counterpart")
    proposed = payload.get("proposed_target")
    if proposed is not None and (not isinstance(proposed, str) or len(proposed) > 200):
        raise ApiError(422, "invalid_proposed_target", "proposed_target must be a field name")
    source_type = payload.get("source_type")
    if source_type is not None and not isinstance(source_type, str):
        raise ApiError(422, "invalid_source_type", "source_type must be a string")
    item = correction(Field(source, source_type), proposed, target, _source_name(payload))
    [result] = await runtime_of(request).learning.call("learn", claims.tenant, [item])
    return JSONResponse(result, status_code=201)


async def stats(request: Request) -> JSONResponse:
    claims = authenticate(request, "learning:read")
    return JSONResponse(await runtime_of(request).learning.call("stats_for", claims.tenant))


ROUTES = [
    Route("/v1/learning/corrections", learn_corrections, methods=["POST"]),
    Route("/v1/learning/successes", learn_successes, methods=["POST"]),
    Route("/v1/learning/recommendations", recommendations, methods=["POST"]),
    Route("/v1/learning/feedback", feedback, methods=["POST"]),
    Route("/v1/learning/stats", stats, methods=["GET"]),
    Route("/v1/mappings", map_source_fields, methods=["POST"]),
    Route("/v1/mappings/corrections", correct_mapping, methods=["POST"]),
]
