"""The gateway's request body: an OpenAI chat completion request, closed to the fields the gateway
forwards (anything else is refused rather than passed blind to a paid API)."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field

from serve_app.schemas.base import Answer, Body, Code

ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_MESSAGES = 1_000


class ChatMessage(Body):
    """A message as the provider takes it: its role is checked, the rest is forwarded."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)
    body_code = "invalid_messages"
    role: Annotated[Literal[ROLES], Code("invalid_messages")]  # type: ignore[valid-type]


MaxTokens = Annotated[int | None, Field(gt=0), Code("invalid_max_tokens")]


class ChatBody(Body):
    """`max_tokens` (or `max_completion_tokens`) is reserved and enforced; at most the deployment's
    gateway_max_tokens, and gateway_default_max_tokens when absent."""

    unknown_code = "unsupported_field"
    model: Annotated[str, Field(min_length=1, max_length=200), Code("invalid_model")]
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES), Code("invalid_messages")]
    max_tokens: MaxTokens = None
    max_completion_tokens: MaxTokens = None
    stream: Annotated[bool, Code("invalid_stream")] = False
    n: Annotated[Literal[1], Code("unsupported_n")] = 1
    stream_options: dict[str, Any] | None = None
    temperature: Any = None
    top_p: Any = None
    stop: Any = None
    presence_penalty: Any = None
    frequency_penalty: Any = None
    seed: Any = None
    user: Any = None
    response_format: Any = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    logit_bias: Any = None
    parallel_tool_calls: Any = None


class ChatCompletion(Answer):
    """The provider's answer, passed through (or, with `stream`, its server-sent events)."""

    id: str | None = None
    choices: list[dict[str, Any]] | None = None
