"""HTTP routes of the learning engine and field mapping (docs/learning.md). Tenant from the token."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from crews.field_mapping import correction, map_fields
from crews.field_matcher import Field, SchemaError
from serve_app.contract import api
from serve_app.errors import ApiError
from serve_app.requests import authenticate, parse_body, runtime_of
from serve_app.schemas import learning as schemas
from serve_app.schemas.base import items_of

LIMITS = {422: ("value_not_storable",), 429: ("quota_exceeded",), 503: ("learning_unavailable",)}


@api("Learn from users' corrections", scope="learning:write", body=schemas.CorrectionsBody,
     answer=schemas.Pattern | schemas.Patterns, status=201, errors=LIMITS)
async def learn_corrections(request: Request) -> JSONResponse:
    claims = authenticate(request, "learning:write")
    items, single = items_of(await parse_body(request, schemas.CorrectionsBody))
    batch = [{"type": "correction", "original": item.original, "corrected": item.corrected, "context": item.context}
             for item in items]
    results = await runtime_of(request).learning.call("learn", claims.tenant, batch)
    return JSONResponse(results[0] if single else {"patterns": results}, status_code=201)


@api("Learn from results users accepted", scope="learning:write", body=schemas.SuccessesBody,
     answer=schemas.Pattern | schemas.Patterns, status=201, errors=LIMITS)
async def learn_successes(request: Request) -> JSONResponse:
    claims = authenticate(request, "learning:write")
    items, single = items_of(await parse_body(request, schemas.SuccessesBody))
    batch = [{"type": "success", "result": item.result, "context": item.context} for item in items]
    results = await runtime_of(request).learning.call("learn", claims.tenant, batch)
    return JSONResponse(results[0] if single else {"patterns": results}, status_code=201)


@api("Patterns learned in contexts like this one", scope="learning:read", body=schemas.RecommendationsBody,
     answer=schemas.LearnedRecommendations)
async def recommendations(request: Request) -> JSONResponse:
    claims = authenticate(request, "learning:read")
    body = await parse_body(request, schemas.RecommendationsBody)
    found = await runtime_of(request).learning.call("recommendations", claims.tenant, body.context, body.threshold,
                                                    body.limit)
    return JSONResponse({"recommendations": found})


@api("Say whether a recommendation was accepted", scope="learning:write", body=schemas.FeedbackBody,
     answer=schemas.Pattern, errors={404: ("pattern_not_found",)})
async def feedback(request: Request) -> JSONResponse:
    claims = authenticate(request, "learning:write")
    body = await parse_body(request, schemas.FeedbackBody)
    return JSONResponse(await runtime_of(request).learning.call("feedback", claims.tenant, body.pattern_id,
                                                                body.accepted))


@api("Map source to target fields, applying the tenant's corrections", scope="learning:read",
     body=schemas.MappingBody, answer=schemas.Mapping)
async def map_source_fields(request: Request) -> JSONResponse:
    claims = authenticate(request, "learning:read")
    body = await parse_body(request, schemas.MappingBody)
    try:
        result = await map_fields(runtime_of(request).learning.call, claims.tenant, body.source_schema,
                                  body.target_schema, body.source_name)
    except SchemaError as error:
        raise ApiError(422, "invalid_schema", str(error)) from error
    return JSONResponse(result)


@api("Correct one proposed mapping; learned in the matcher's context shape", scope="learning:write",
     body=schemas.MappingCorrectionBody, answer=schemas.Pattern, status=201, errors=LIMITS)
async def correct_mapping(request: Request) -> JSONResponse:
    claims = authenticate(request, "learning:write")
    body = await parse_body(request, schemas.MappingCorrectionBody)
    item = correction(Field(body.source_field, body.source_type), body.proposed_target, body.target_field,
                      body.source_name)
    [result] = await runtime_of(request).learning.call("learn", claims.tenant, [item])
    return JSONResponse(result, status_code=201)


@api("The tenant's learning figures", scope="learning:read", answer=schemas.LearningStats)
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
