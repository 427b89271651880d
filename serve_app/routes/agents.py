"""HTTP routes of the agent mailboxes (docs/agents.md). The tenant always comes from the token."""
from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from serve_app.contract import api
from serve_app.errors import ApiError
from serve_app.requests import authenticate, parse_body, parse_query, runtime_of
from serve_app.schemas import agents as schemas
from serve_app.schemas.base import NAME_PATTERN, items_of

NAME = re.compile(NAME_PATTERN)
QUEUE = {404: ("not_found",), 429: ("quota_exceeded",), 503: ("mailbox_unavailable",)}


def _path_name(request: Request, key: str) -> str:
    value = request.path_params[key]
    if not NAME.fullmatch(value):
        raise ApiError(404, "not_found", f"no such {key}")
    return value


@api("Send messages to an agent", scope="agents:write", body=schemas.MessagesBody, answer=schemas.Sent,
     status=201, errors=QUEUE)
async def send(request: Request) -> JSONResponse:
    claims = authenticate(request, "agents:write")
    agent = _path_name(request, "agent")
    items, _ = items_of(await parse_body(request, schemas.MessagesBody))
    messages = [{"receiver": agent, **item.model_dump(include={"sender", "type", "content", "correlation_id"})}
                for item in items]
    sent = await runtime_of(request).mailbox.call("send", claims.tenant, messages)
    return JSONResponse({"message_ids": [m["message_id"] for m in sent], "messages": sent}, status_code=201)


@api("Receive an agent's messages (long-poll with wait); each stays in flight for `visibility` seconds",
     scope="agents:write", query=schemas.ReceiveQuery, answer=schemas.Messages, errors=QUEUE)
async def receive(request: Request) -> JSONResponse:
    claims = authenticate(request, "agents:write")
    agent = _path_name(request, "agent")
    query = parse_query(request, schemas.ReceiveQuery)
    mailbox = runtime_of(request).mailbox
    call = mailbox.call_alone if query.wait > 0 else mailbox.call
    messages = await call("receive", claims.tenant, agent, query.max, query.wait, query.visibility)
    return JSONResponse({"messages": messages})


@api("Acknowledge one message", scope="agents:write", answer=schemas.Message,
     errors={404: ("not_found", "message_not_found"), 409: ("message_dead",)})
async def ack(request: Request) -> JSONResponse:
    claims = authenticate(request, "agents:write")
    agent = _path_name(request, "agent")
    message_id = request.path_params["message_id"]
    if not (0 < len(message_id) <= 64 and message_id.isalnum()):
        raise ApiError(404, "message_not_found", "no unacknowledged message with this id for this agent")
    return JSONResponse(await runtime_of(request).mailbox.call("ack", claims.tenant, agent, message_id))


@api("Acknowledge many messages", scope="agents:write", body=schemas.AckBody, answer=schemas.Acked,
     errors={404: ("not_found",)})
async def ack_many(request: Request) -> JSONResponse:
    claims = authenticate(request, "agents:write")
    agent = _path_name(request, "agent")
    ids = (await parse_body(request, schemas.AckBody)).message_ids
    return JSONResponse(await runtime_of(request).mailbox.call("ack_many", claims.tenant, agent, ids))


@api("Set the topics an agent subscribes to", scope="agents:write", body=schemas.TopicsBody, answer=schemas.Topics,
     errors={404: ("not_found",)})
async def put_topics(request: Request) -> JSONResponse:
    claims = authenticate(request, "agents:write")
    agent = _path_name(request, "agent")
    names = (await parse_body(request, schemas.TopicsBody)).topics
    return JSONResponse(await runtime_of(request).mailbox.call("set_topics", claims.tenant, agent, names))


@api("The topics an agent subscribes to", scope="agents:read", answer=schemas.Topics, errors={404: ("not_found",)})
async def get_topics(request: Request) -> JSONResponse:
    claims = authenticate(request, "agents:read")
    agent = _path_name(request, "agent")
    return JSONResponse(await runtime_of(request).mailbox.call("get_topics", claims.tenant, agent))


@api("Send a message to every subscriber of a topic", scope="agents:write", body=schemas.MessageBody,
     answer=schemas.Broadcast, status=201, errors=QUEUE)
async def broadcast(request: Request) -> JSONResponse:
    claims = authenticate(request, "agents:write")
    topic = _path_name(request, "topic")
    message = await parse_body(request, schemas.MessageBody)
    result = await runtime_of(request).mailbox.call(
        "broadcast", claims.tenant, message.sender, topic, message.type, message.content
    )
    return JSONResponse(result, status_code=201)


@api("Send a request to another agent and wait for its response", scope="agents:write", body=schemas.RequestBody,
     answer=schemas.Reply, errors={**QUEUE, 504: ("request_timeout",)})
async def request_response(request: Request) -> JSONResponse:
    claims = authenticate(request, "agents:write")
    sender = _path_name(request, "agent")
    body = await parse_body(request, schemas.RequestBody)
    return JSONResponse(await runtime_of(request).mailbox.call_alone(
        "request", claims.tenant, sender, body.receiver, body.content, body.timeout))


@api("An agent's dead letters", scope="agents:read", query=schemas.DeadLettersQuery, answer=schemas.Messages,
     errors={404: ("not_found",)})
async def dead_letters(request: Request) -> JSONResponse:
    claims = authenticate(request, "agents:read")
    agent = _path_name(request, "agent")
    limit = parse_query(request, schemas.DeadLettersQuery).limit
    return JSONResponse({"messages": await runtime_of(request).mailbox.call("dead_letters", claims.tenant, agent, limit)})


@api("An agent's queue depth", scope="agents:read", answer=schemas.Depth, errors={404: ("not_found",)})
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
