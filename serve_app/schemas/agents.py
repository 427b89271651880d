"""Bodies and answers of the agent mailbox routes (docs/agents.md)."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from actors.mailbox.core import MESSAGE_TYPES
from serve_app.schemas.base import Answer, Body, Code, Name, Query, one_or_many

MAX_MESSAGES = 1_000
MessageId = Annotated[str, Field(min_length=1, max_length=64)]


class MessageBody(Body):
    """One message to an agent (or, broadcast, to a topic's subscribers)."""

    body_code = "invalid_message"
    sender: Annotated[Name, Code("invalid_sender")]
    type: Annotated[Literal[MESSAGE_TYPES], Code("invalid_type")] = "notification"  # type: ignore[valid-type]
    content: Annotated[Any, Code("missing_content")]
    correlation_id: Annotated[MessageId | None, Code("invalid_correlation_id")] = None


MessagesBody = one_or_many(MessageBody, "messages", most=MAX_MESSAGES, code="invalid_messages")


class AckBody(Body):
    body_code = "invalid_message_ids"
    message_ids: Annotated[list[MessageId], Field(min_length=1, max_length=MAX_MESSAGES), Code("invalid_message_ids")]


class TopicsBody(Body):
    body_code = "invalid_topics"
    topics: Annotated[list[Annotated[Name, Code("invalid_topic")]], Field(max_length=100), Code("invalid_topics")]


class RequestBody(Body):
    """A request to another agent, answered within `timeout` seconds."""

    body_code = "missing_content"
    receiver: Annotated[Name, Code("invalid_receiver")]
    content: Annotated[Any, Code("missing_content")]
    timeout: Annotated[float, Field(gt=0, le=30), Code("invalid_timeout")] = 10.0


class ReceiveQuery(Query):
    max: Annotated[int, Field(ge=1, le=100)] = 10
    wait: Annotated[float, Field(ge=0, le=30)] = 0.0
    visibility: Annotated[float, Field(ge=1, le=3600)] = 30.0


class DeadLettersQuery(Query):
    limit: Annotated[int, Field(ge=1, le=1_000)] = 100


class Message(Answer):
    message_id: str


class Sent(Answer):
    message_ids: list[str]
    messages: list[Message]


class Messages(Answer):
    messages: list[dict[str, Any]]


class Topics(Answer):
    topics: list[str]


class Acked(Answer):
    """How many of the ids were acknowledged."""


class Broadcast(Answer):
    """The topic's subscribers the message went to."""


class Depth(Answer):
    """The agent's ready, in-flight and dead messages."""


class Reply(Answer):
    request_id: str
    response: dict[str, Any]
