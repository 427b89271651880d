"""HTTP routes of the agent mailboxes (docs/agents.md). The tenant always comes from the token."""
from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from actors.mailbox.core import MESSAGE_TYPES
from serve_app.errors import ApiError
from serve_app.requests import authenticate, int_param, read_json, runtime_of

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
MAX_MESSAGES = 1_000


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise ApiError(422, f"invalid_{what}", f"{what} must be 1-128 letters, digits, '.', '_', ':' or '-'")
    return value


def _path_name(request: Request, key: str) -> str:
    value = request.path_params[key]
    if not NAME.fullmatch(value):
        raise ApiError(404, "not_found", f"no such {key}")
    return value


def _message(item: Any, receiver: str, where: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise ApiError(422, "invalid_message", f"{where}a message must be a JSON object")
    kind = item.get("type", "notification")
    if kind not in MESSAGE_TYPES:
        raise ApiError(422, "invalid_type", f"{where}type must be one of {list(MESSAGE_TYPES)}")
    if "content" not in item:
        raise ApiError(422, "missing_content", f"{where}content is required")
    correlation = item.get("correlation_id")
    if correlation is not None and (not isinstance(correlation, str) or not 0 < len(correlation) <= 64):
        raise ApiError(422, "invalid_correlation_id", f"{where}correlation_id must be a string of 1-64 characters")
    return {"receiver": receiver, "sender": _name(item.get("sender"), "sender"), "type": kind,
            "content": item["content"], "correlation_id": correlation}


async def send(request: Request) -> JSONResponse:
    claims = authenticate(request, "agents:write")
    agent = _path_name(request, "agent")
    payload = await read_json(request)
    items = payload.get("messages") if isinstance(payload, dict) and "messages" in payload else [payload]
    if not isinstance(items, list) or not 0 < len(items) <= MAX_MESSAGES:
        raise ApiError(422, "invalid_messages", f"messages must be a list of 1-{MAX_MESSAGES} messages")
    messages = [_message(item, agent, f"messages[{i}].") for i, item in enumerate(items)]
    sent = await runtime_of(request).mailbox.call("send", claims.tenant, messages)
    return JSONResponse({"message_ids": [m["message_id"] for m in sent], "messages": sent}, status_code=201)


def _seconds(request: Request, name: str, default: float, low: float, high: float) -> float:
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not low <= value <= high:
        raise ApiError(422, "invalid_parameter", f"{name} must be a number of seconds in [{low}, {high}]")
    return value


async def receive(request: Request) -> JSONResponse:
    claims = authenticate(request, "agents:write")
    agent = _path_name(request, "agent")
    count = int_param(request, "max", 10, low=1, high=100)
    wait = _seconds(request, "wait", 0.0, 0.0, 30.0)
    visibility = _seconds(request, "visibility", 30.0, 1.0, 3600.0)
    mailbox = runtime_of(request).mailbox
    call = mailbox.call_alone if wait > 0 else mailbox.call
    messages = await call("receive", claims.tenant, agent, count, wait, visibility)
    return JSONResponse({"messages": messages})


async def ack(request: Request) -> JSONResponse:
    claims = authenticate(request, "agents:write")
    agent = _path_name(request, "agent")
    message_id = request.path_params["message_id"]
    if not (0 < len(message_id) <= 64 and message_id.isalnum()):
        raise ApiError(404, "message_not_found", "no unacknowledged message with this id for this agent")
    return JSONResponse(await runtime_of(request).mailbox.call("ack", claims.tenant, agent, message_id))


async def ack_many(request: Request) -> JSONResponse:
    claims = authenticate(request, "agents:write")
    agent = _path_name(request, "agent")
    payload = await read_json(request)
    ids = payload.get("message_ids") if isinstance(payload, dict) else None
    if (not isinstance(ids, list) or not 0 < len(ids) <= MAX_MESSAGES
            or not all(isinstance(i, str) and 0 < len(i) <= 64 for i in ids)):
        raise ApiError(422, "invalid_message_ids", f"message_ids must be a list of 1-{MAX_MESSAGES} message ids")
    return JSONResponse(await runtime_of(request).mailbox.call("ack_many", claims.tenant, agent, ids))


async def put_topics(request: Request) -> JSONResponse:
    claims = authenticate(request, "agents:write")
    agent = _path_name(request, "agent")
    payload = await read_json(request)
    topics = payload.get("topics") if isinstance(payload, dict) else None
    if not isinstance(topics, list) or len(topics) > 100:
        raise ApiError(422, "invalid_topics", "topics must be a list of at most 100 topic names")
    names = [_name(t, "topic") for t in topics]
    return JSONResponse(await runtime_of(request).mailbox.call("set_topics", claims.tenant, agent, names))


async def get_topics(request: Request) -> JSONResponse:
    claims = authenticate(request, "agents:read")
    agent = _path_name(request, "agent")
    return JSONResponse(await runtime_of(request).mailbox.call("get_topics", claims.tenant, agent))


async def broadcast(request: Request) -> JSONResponse:
    claims = authenticate(request, "agents:write")
    topic = _path_name(request, "topic")
    payload = await read_json(request)
    message = _message(payload, "-", "")
    result = await runtime_of(request).mailbox.call(
        "broadcast", claims.tenant, message["sender"], topic, message["type"], message["content"]
    )
    return JSONResponse(result, status_code=201)


async def request_response(request: Request) -> JSONResponse:
    claims = authenticate(request, "agents:write")
    sender = _path_name(request, "agent")
    payload = await read_json(request)
    if not isinstance(payload, dict) or "content" not in payload:
        raise ApiError(422, "missing_content", "content is required")
    receiver = _name(payload.get("receiver"), "receiver")
    timeout = payload.get("timeout", 10)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 30:
        raise ApiError(422, "invalid_timeout", "timeout must be a number of seconds in (0, 30]")
    return JSONResponse(await runtime_of(request).mailbox.call_alone(
        "request", claims.tenant, sender, receiver, payload["content"], float(timeout)))


async def dead_letters(request: Request) -> JSONResponse:
    claims = authenticate(request, "agents:read")
    agent = _path_name(request, "agent")
    limit = int_param(request, "limit", 100, low=1, high=1_000)
    return JSONResponse({"messages": await runtime_of(request).mailbox.call("dead_letters", claims.tenant, agent, limit)})


async def depth(request: Request) -> JSONResponse:
    claims = authenticate(request, "agents:read")
    return JSONResponse(await runtime_of(request).mailbox.call("depth", claims.tenant, _path_name(request, "agent")))


ROUTES = [
    Route("/v1/agents/{agent}", depth, methods=["GET"]),
    Route("/v1/agents/{agent}/messages", send, methods=["POST"]),
    Route("/v1/agents/{agent}/messages", receive, methods=["GET"]),
    Route("/v1/agents/{agent}/messages/ack", ack_many, methods=["POST"]),
    Route("/v1/agents/{agent}/messages/{message_id}/ack", ack, methods=["POST"]),
    Route("/v1/agents/{agent}/topics", put_topics, methods=["PUT"]),
    Route("/v1/agents/{agent}/topics", get_topics, methods=["GET"]),
    Route("/v1/agents/{agent}/requests", request_response, methods=["POST"]),
    Route("/v1/agents/{agent}/dead-letters", dead_letters, methods=["GET"]),
    Route("/v1/topics/{topic}/messages", broadcast, methods=["POST"]),
]
