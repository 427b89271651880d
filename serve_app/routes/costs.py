"""HTTP routes of the cost ledger (docs/costs.md). The tenant always comes from the token."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from actors.ledger.core import LedgerError
from actors.ledger.levels import SCOPES, TENANT_KEY, validate_settings
from serve_app.auth import Claims
from serve_app.errors import ApiError
from serve_app.requests import authenticate, read_json, runtime_of

MAX_TOKENS = 10**9
MAX_RECORDS = 1_000
TEXT_FIELDS = ("agent", "task", "flow_id", "idempotency_key")


async def ledger(request: Request, method: str, tenant: str, *args: Any) -> Any:
    try:
        return await runtime_of(request).ledger.call(method, tenant, *args)
    except LedgerError as error:
        raise ApiError(error.status, error.code, error.message, **error.details) from error


def _object(payload: Any) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise ApiError(422, "invalid_body", "send a JSON object")
    return payload


def _tokens(payload: dict[str, Any], name: str, *, required: bool = True, where: str = "") -> int:
    value = payload.get(name)
    if value is None and not required:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOKENS:
        raise ApiError(422, "invalid_tokens", f"{where}{name} must be a non-negative integer")
    return value


def _model(payload: dict[str, Any], where: str = "") -> str:
    model = payload.get("model")
    if not isinstance(model, str) or not 0 < len(model) <= 200:
        raise ApiError(422, "invalid_model", f"{where}model must be a model name")
    return model


def _usage(payload: dict[str, Any], where: str = "", *, with_model: bool = True) -> dict[str, Any]:
    record: dict[str, Any] = {
        "input_tokens": _tokens(payload, "input_tokens", where=where),
        "output_tokens": _tokens(payload, "output_tokens", where=where),
        "cached_tokens": _tokens(payload, "cached_tokens", required=False, where=where),
    }
    if record["cached_tokens"] > record["input_tokens"]:
        raise ApiError(422, "invalid_tokens", f"{where}cached_tokens cannot exceed input_tokens")
    if with_model:
        record["model"] = _model(payload, where)
    for name in TEXT_FIELDS:
        record[name] = _text(payload, name, where)
    return record


def _text(payload: dict[str, Any], name: str, where: str = "") -> str | None:
    value = payload.get(name)
    if value is not None and (not isinstance(value, str) or not 0 < len(value) <= 200):
        raise ApiError(422, "invalid_field", f"{where}{name} must be a string of 1-200 characters")
    return value


def _who(claims: Claims) -> dict[str, str | None]:
    """The user and engagement a record is charged to come from the token, never from the body."""
    return {"user": claims.user, "engagement": claims.engagement}


def _number(payload: dict[str, Any], name: str, default: float | None = None) -> float | None:
    value = payload.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ApiError(422, f"invalid_{name}", f"{name} must be a number")
    return float(value)


async def record_usage(request: Request) -> JSONResponse:
    claims = authenticate(request, "costs:write")
    payload = await read_json(request)
    items = payload.get("records") if isinstance(payload, dict) and "records" in payload else payload
    single = isinstance(items, dict)
    items = [items] if single else items
    if not isinstance(items, list) or not items or len(items) > MAX_RECORDS:
        raise ApiError(422, "invalid_records", f"send a record or {{'records': [...]}} with 1-{MAX_RECORDS} records")
    records = [{**_usage(_object(item), f"records[{i}]."), **_who(claims)} for i, item in enumerate(items)]
    keys = [r["idempotency_key"] for r in records if r["idempotency_key"]]
    if len(keys) != len(set(keys)):
        raise ApiError(422, "duplicate_idempotency_key", "an idempotency_key appears twice in this batch")
    results = await ledger(request, "record_usage", claims.tenant, records)
    total = round(sum(r["cost"] for r in results if not r["duplicate"]), 9)
    body = results[0] if single else {"records": results, "total_cost": total}
    return JSONResponse(body, status_code=201)


def _bound(payload: dict[str, Any], name: str, alias: str) -> int:
    """A reservation's bound, under its name or the earlier `estimated_*` one."""
    return _tokens(payload, name if name in payload or alias not in payload else alias)


async def reserve(request: Request) -> JSONResponse:
    claims = authenticate(request, "costs:write")
    payload = _object(await read_json(request))
    model = _model(payload)
    estimate_in = _bound(payload, "input_tokens", "estimated_input_tokens")
    estimate_out = _bound(payload, "max_output_tokens", "estimated_output_tokens")
    ttl = _number(payload, "ttl_seconds")
    if ttl is not None and not 0 < ttl <= 86_400:
        raise ApiError(422, "invalid_ttl_seconds", "ttl_seconds must be between 0 and 86400")
    tags = {**_who(claims), "agent": _text(payload, "agent")}
    found = await ledger(request, "reserve", claims.tenant, model, estimate_in, estimate_out, ttl, tags)
    return JSONResponse(found, status_code=201)


def _reservation_id(request: Request) -> str:
    rid = request.path_params["reservation_id"]
    if not (0 < len(rid) <= 64 and rid.isalnum()):
        raise ApiError(404, "reservation_not_found", "no open reservation with this id")
    return rid


async def settle(request: Request) -> JSONResponse:
    claims = authenticate(request, "costs:write")
    rid = _reservation_id(request)
    payload = _object(await read_json(request))
    usage = {**_usage(payload, with_model=False), **_who(claims)}
    return JSONResponse(await ledger(request, "settle", claims.tenant, rid, usage), status_code=201)


async def release(request: Request) -> JSONResponse:
    claims = authenticate(request, "costs:write")
    return JSONResponse(await ledger(request, "release", claims.tenant, _reservation_id(request)))


async def put_budget(request: Request) -> JSONResponse:
    claims = authenticate(request, "costs:admin")
    payload = _object(await read_json(request))
    amount = _number(payload, "monthly_budget")
    threshold = _number(payload, "alert_threshold", 0.8)
    if amount is None or not 0 < amount <= 1e9:
        raise ApiError(422, "invalid_budget", "monthly_budget must be a positive number of USD")
    if not 0 < threshold <= 1:
        raise ApiError(422, "invalid_threshold", "alert_threshold must be in (0, 1]")
    return JSONResponse(await ledger(request, "set_budget", claims.tenant, amount, threshold))


async def get_budget(request: Request) -> JSONResponse:
    claims = authenticate(request, "costs:read")
    return JSONResponse(await ledger(request, "get_budget", claims.tenant))


def _level(request: Request) -> tuple[str, str]:
    """A level's (scope, key) from the path: the tenant-wide level is `tenant/all`."""
    scope, key = request.path_params["scope"], request.path_params["key"]
    if scope not in SCOPES:
        raise ApiError(404, "level_not_found", f"a budget level's scope is one of {list(SCOPES)}")
    if scope == "tenant" and key != TENANT_KEY:
        raise ApiError(404, "level_not_found", f"the tenant-wide level's key is {TENANT_KEY!r}")
    if not 0 < len(key) <= 200 or not key.isprintable():
        raise ApiError(422, "invalid_level_key", "a level's key is 1-200 printable characters")
    return scope, key


async def put_level(request: Request) -> JSONResponse:
    claims = authenticate(request, "costs:admin")
    scope, key = _level(request)
    try:
        settings = validate_settings(_object(await read_json(request)))
    except ValueError as error:
        code, message = error.args
        raise ApiError(422, code, message) from error
    return JSONResponse(await ledger(request, "set_level", claims.tenant, scope, key, settings))


async def get_level(request: Request) -> JSONResponse:
    claims = authenticate(request, "costs:read")
    scope, key = _level(request)
    [found] = await ledger(request, "levels", claims.tenant, scope, key)
    return JSONResponse(found)


async def delete_level(request: Request) -> JSONResponse:
    claims = authenticate(request, "costs:admin")
    scope, key = _level(request)
    await ledger(request, "delete_level", claims.tenant, scope, key)
    return JSONResponse({"deleted": {"scope": scope, "key": key}})


async def list_levels(request: Request) -> JSONResponse:
    claims = authenticate(request, "costs:read")
    scope = request.query_params.get("scope")
    if scope is not None and scope not in SCOPES:
        raise ApiError(422, "invalid_parameter", f"scope must be one of {list(SCOPES)}")
    return JSONResponse({"levels": await ledger(request, "levels", claims.tenant, scope)})


# Far enough apart for any summary, near enough that "start = end - 30 days" and every database's
# timestamp type hold it (0001-01-01 minus 30 days was a 500).
EARLIEST = datetime(1970, 1, 1, tzinfo=timezone.utc)
LATEST = datetime(9000, 1, 1, tzinfo=timezone.utc)


def _date(request: Request, name: str) -> datetime | None:
    raw = request.query_params.get(name)
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        value = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        value.astimezone(timezone.utc)
    except (ValueError, OverflowError) as error:
        raise ApiError(422, "invalid_parameter", f"{name} must be an ISO-8601 date or time") from error
    if not EARLIEST <= value <= LATEST:
        raise ApiError(422, "invalid_parameter", f"{name} must be between {EARLIEST.year} and {LATEST.year}")
    return value


async def summary(request: Request) -> JSONResponse:
    claims = authenticate(request, "costs:read")
    end = _date(request, "end") or datetime.now(timezone.utc)
    start = _date(request, "start") or end - timedelta(days=30)
    if start >= end:
        raise ApiError(422, "invalid_parameter", "start must be before end")
    return JSONResponse(await ledger(request, "summary", claims.tenant, start, end))


async def recommendations(request: Request) -> JSONResponse:
    claims = authenticate(request, "costs:read")
    return JSONResponse(await ledger(request, "recommendations", claims.tenant))


async def select_model(request: Request) -> JSONResponse:
    claims = authenticate(request, "costs:read")
    payload = _object(await read_json(request))
    task_type = payload.get("task_type", "medium")
    if not isinstance(task_type, str) or not 0 < len(task_type) <= 64:
        raise ApiError(422, "invalid_task_type", "task_type must be a short string")
    quality = _number(payload, "quality_requirement")
    if quality is not None and not 0 <= quality <= 1:
        raise ApiError(422, "invalid_quality_requirement", "quality_requirement must be in [0, 1]")
    cost = _number(payload, "cost_constraint")
    if cost is not None and cost <= 0:
        raise ApiError(422, "invalid_cost_constraint", "cost_constraint must be a positive number of USD per call")
    return JSONResponse(await ledger(request, "select_model", claims.tenant, task_type, quality, cost))


async def estimate(request: Request) -> JSONResponse:
    claims = authenticate(request, "costs:read")
    payload = _object(await read_json(request))
    model = _model(payload)
    if "tokens" in payload:  # the original's form: a total, split 2:1 input to output
        total = _tokens(payload, "tokens")
        inp, out, cached = int(total * 0.67), total - int(total * 0.67), 0
    else:
        inp, out = _tokens(payload, "input_tokens"), _tokens(payload, "output_tokens")
        cached = _tokens(payload, "cached_tokens", required=False)
    return JSONResponse(await ledger(request, "estimate", claims.tenant, model, inp, out, cached))


async def list_prices(request: Request) -> JSONResponse:
    claims = authenticate(request, "costs:read")
    search = request.query_params.get("model", "")[:200]
    limit = request.query_params.get("limit", "50")
    if not limit.isdigit() or not 1 <= int(limit) <= 500:
        raise ApiError(422, "invalid_parameter", "limit must be between 1 and 500")
    return JSONResponse({"prices": await ledger(request, "prices", claims.tenant, search, int(limit))})


ROUTES = [
    Route("/v1/costs/usage", record_usage, methods=["POST"]),
    Route("/v1/costs/reservations", reserve, methods=["POST"]),
    Route("/v1/costs/reservations/{reservation_id}/settle", settle, methods=["POST"]),
    Route("/v1/costs/reservations/{reservation_id}", release, methods=["DELETE"]),
    Route("/v1/costs/budget", put_budget, methods=["PUT"]),
    Route("/v1/costs/budget", get_budget, methods=["GET"]),
    Route("/v1/costs/budgets", list_levels, methods=["GET"]),
    Route("/v1/costs/budgets/{scope}/{key}", put_level, methods=["PUT"]),
    Route("/v1/costs/budgets/{scope}/{key}", get_level, methods=["GET"]),
    Route("/v1/costs/budgets/{scope}/{key}", delete_level, methods=["DELETE"]),
    Route("/v1/costs/summary", summary, methods=["GET"]),
    Route("/v1/costs/recommendations", recommendations, methods=["GET"]),
    Route("/v1/costs/select-model", select_model, methods=["POST"]),
    Route("/v1/costs/estimate", estimate, methods=["POST"]),
    Route("/v1/costs/prices", list_prices, methods=["GET"]),
]
