"""HTTP routes of the cost ledger (docs/costs.md). The tenant always comes from the token."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from actors.ledger.levels import SCOPES, TENANT_KEY
from serve_app.auth import Claims
from serve_app.contract import api
from serve_app.errors import ApiError
from serve_app.requests import authenticate, parse_body, parse_query, runtime_of
from serve_app.schemas import costs as schemas
from serve_app.schemas.base import items_of

def ledger(request: Request) -> Any:
    """The ledger's client; a refusal (LedgerError, an ActorError) is answered as it stands."""
    return runtime_of(request).ledger


def _who(claims: Claims) -> dict[str, str | None]:
    """The user and engagement a record is charged to come from the token, never from the body."""
    return {"user": claims.user, "engagement": claims.engagement}


def _usage(usage: schemas.Usage, claims: Claims) -> dict[str, Any]:
    return {**usage.model_dump(), **_who(claims)}


BUDGET_REFUSALS = {402: ("budget_exceeded",), 422: ("budget_above_cap", "unknown_model", "value_not_storable"),
                   503: ("ledger_unavailable",)}


@api("Record the usage of calls already made", scope="costs:write", body=schemas.UsageBody,
     answer=schemas.UsageResult | schemas.UsageBatchResult, status=201,
     errors={**BUDGET_REFUSALS, 409: ("idempotency_mismatch",), 422: ("duplicate_idempotency_key", "value_not_storable")})
async def record_usage(request: Request) -> JSONResponse:
    claims = authenticate(request, "costs:write")
    items, single = items_of(await parse_body(request, schemas.UsageBody))
    records = [_usage(item, claims) for item in items]
    keys = [r["idempotency_key"] for r in records if r["idempotency_key"]]
    if len(keys) != len(set(keys)):
        raise ApiError(422, "duplicate_idempotency_key", "an idempotency_key appears twice in this batch")
    results = await ledger(request).call("record_usage", claims.tenant, records)
    total = round(sum(r["cost"] for r in results if not r["duplicate"]), 9)
    body = results[0] if single else {"records": results, "total_cost": total}
    return JSONResponse(body, status_code=201)


@api("Reserve a call's worst case against every budget", scope="costs:write", body=schemas.ReservationBody,
     answer=schemas.Reservation, status=201, errors=BUDGET_REFUSALS)
async def reserve(request: Request) -> JSONResponse:
    claims = authenticate(request, "costs:write")
    body = await parse_body(request, schemas.ReservationBody)
    tags = {**_who(claims), "agent": body.agent}
    found = await ledger(request).call("reserve", claims.tenant, body.model, body.input_tokens, body.max_output_tokens,
                         body.ttl_seconds, tags)
    return JSONResponse(found, status_code=201)


def _reservation_id(request: Request) -> str:
    rid = request.path_params["reservation_id"]
    if not (0 < len(rid) <= 64 and rid.isalnum()):
        raise ApiError(404, "reservation_not_found", "no open reservation with this id")
    return rid


@api("Settle a reservation with the usage the provider reported", scope="costs:write", body=schemas.Usage,
     answer=schemas.Settled, status=201,
     errors={404: ("reservation_not_found",), 409: ("reservation_closed", "idempotency_mismatch"),
             422: ("usage_exceeds_reservation", "value_not_storable")})
async def settle(request: Request) -> JSONResponse:
    claims = authenticate(request, "costs:write")
    rid = _reservation_id(request)
    usage = _usage(await parse_body(request, schemas.Usage), claims)
    return JSONResponse(await ledger(request).call("settle", claims.tenant, rid, usage), status_code=201)


@api("Release a reservation unused", scope="costs:write", answer=schemas.Released,
     errors={404: ("reservation_not_found",), 409: ("reservation_closed",)})
async def release(request: Request) -> JSONResponse:
    claims = authenticate(request, "costs:write")
    return JSONResponse(await ledger(request).call("release", claims.tenant, _reservation_id(request)))


@api("Set the tenant's own monthly budget (within the operator's cap)", scope="costs:admin",
     body=schemas.BudgetBody, answer=schemas.Budget, errors={422: ("budget_above_cap",)})
async def put_budget(request: Request) -> JSONResponse:
    claims = authenticate(request, "costs:admin")
    body = await parse_body(request, schemas.BudgetBody)
    return JSONResponse(await ledger(request).call("set_budget", claims.tenant, body.monthly_budget, body.alert_threshold))


@api("This month's budget, spend and reservations", scope="costs:read", answer=schemas.Budget,
     errors={404: ("budget_not_set",)})
async def get_budget(request: Request) -> JSONResponse:
    claims = authenticate(request, "costs:read")
    return JSONResponse(await ledger(request).call("get_budget", claims.tenant))


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


LEVEL_ERRORS = {404: ("level_not_found",), 422: ("invalid_level_key",)}


@api("Set a budget level: an engagement's, a user's, an agent's or the tenant's", scope="costs:admin",
     body=schemas.LevelBody, answer=schemas.Level, errors=LEVEL_ERRORS)
async def put_level(request: Request) -> JSONResponse:
    claims = authenticate(request, "costs:admin")
    scope, key = _level(request)
    settings = (await parse_body(request, schemas.LevelBody)).settings()
    return JSONResponse(await ledger(request).call("set_level", claims.tenant, scope, key, settings))


@api("A budget level and its spend", scope="costs:read", answer=schemas.Level, errors=LEVEL_ERRORS)
async def get_level(request: Request) -> JSONResponse:
    claims = authenticate(request, "costs:read")
    scope, key = _level(request)
    [found] = await ledger(request).call("levels", claims.tenant, scope, key)
    return JSONResponse(found)


@api("Delete a budget level", scope="costs:admin", answer=schemas.LevelDeleted, errors=LEVEL_ERRORS)
async def delete_level(request: Request) -> JSONResponse:
    claims = authenticate(request, "costs:admin")
    scope, key = _level(request)
    await ledger(request).call("delete_level", claims.tenant, scope, key)
    return JSONResponse({"deleted": {"scope": scope, "key": key}})


@api("The tenant's budget levels", scope="costs:read", query=schemas.LevelsQuery, answer=schemas.Levels)
async def list_levels(request: Request) -> JSONResponse:
    claims = authenticate(request, "costs:read")
    scope = parse_query(request, schemas.LevelsQuery).scope
    return JSONResponse({"levels": await ledger(request).call("levels", claims.tenant, scope)})


@api("Spend by model, agent, flow, day, engagement and user", scope="costs:read", query=schemas.SummaryQuery,
     answer=schemas.Summary)
async def summary(request: Request) -> JSONResponse:
    claims = authenticate(request, "costs:read")
    query = parse_query(request, schemas.SummaryQuery)
    end = query.end or datetime.now(timezone.utc)
    start = query.start or end - timedelta(days=30)
    if start >= end:
        raise ApiError(422, "invalid_parameter", "start must be before end")
    return JSONResponse(await ledger(request).call("summary", claims.tenant, start, end))


@api("Optimisation advice over the last 30 days", scope="costs:read", answer=schemas.CostAdvice)
async def recommendations(request: Request) -> JSONResponse:
    claims = authenticate(request, "costs:read")
    return JSONResponse(await ledger(request).call("recommendations", claims.tenant))


@api("The cheapest model that meets a quality bar", scope="costs:read", body=schemas.SelectModelBody,
     answer=schemas.ModelChoice)
async def select_model(request: Request) -> JSONResponse:
    claims = authenticate(request, "costs:read")
    body = await parse_body(request, schemas.SelectModelBody)
    return JSONResponse(await ledger(request).call("select_model", claims.tenant, body.task_type, body.quality_requirement,
                                     body.cost_constraint))


@api("What a call would cost at the tenant's prices", scope="costs:read", body=schemas.EstimateBody,
     answer=schemas.Estimate, errors={422: ("unknown_model",)})
async def estimate(request: Request) -> JSONResponse:
    claims = authenticate(request, "costs:read")
    body = await parse_body(request, schemas.EstimateBody)
    return JSONResponse(await ledger(request).call("estimate", claims.tenant, body.model, *body.split()))


@api("Prices: the tenant's overrides first, then catalog matches", scope="costs:read", query=schemas.PricesQuery,
     answer=schemas.Prices)
async def list_prices(request: Request) -> JSONResponse:
    claims = authenticate(request, "costs:read")
    query = parse_query(request, schemas.PricesQuery)
    return JSONResponse({"prices": await ledger(request).call("prices", claims.tenant, query.model[:200], query.limit)})


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
