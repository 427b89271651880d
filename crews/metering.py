"""MeteredLLM: every LLM call a crew makes is reserved against the tenant's budget before it runs
and settled with the real token usage after.

The reservation covers the worst case (the prompt's estimated tokens plus the call's output cap),
so concurrent agents of one tenant can never together spend past the budget: the ledger admits a
call only if its worst case fits. A refused reservation raises BudgetExceeded, a crewai HookAborted,
which crewai treats as a deliberate stop (it is not retried by the agent's retry loop) and which
ends the flow as failed with reason `budget_exceeded`.

Crews run in a worker thread (crewai is synchronous), so the ledger is reached through a plain
callable: `CostLedgerClient.call_sync` in production.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import crews  # noqa: F401 - switches off crewai telemetry before crewai is imported
from crewai.hooks.dispatch import HookAborted
from crewai.llms.base_llm import BaseLLM
from pydantic import ConfigDict, PrivateAttr

log = logging.getLogger("raytenant.metering")

# (method, tenant, *args) -> result. A refusal raises an error with `status`, `code`, `message` and
# `details` (the ledger client's ActorError); crews/ reads those four and imports nothing of actors/.
LedgerCall = Callable[..., Any]
DEFAULT_OUTPUT_CAP = 2048  # reserved output tokens when the LLM sets no max_tokens


def _refusal(error: Exception) -> bool:
    """An answer of the ledger (ActorError's fields), as opposed to a bug on this side."""
    return all(hasattr(error, name) for name in ("status", "code", "message", "details"))


class MeteringError(HookAborted):
    """The ledger refused or could not take a call: the flow stops rather than spend unmetered."""

    def __init__(self, message: str, code: str = "ledger_unavailable", **details: Any) -> None:
        super().__init__(message, source="raytenant.metering")
        self.code = code
        self.details = details


class BudgetExceeded(MeteringError):
    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message, "budget_exceeded", **details)


class FlowCancelled(MeteringError):
    """The flow was cancelled: its next LLM call stops the crew instead of spending."""

    def __init__(self) -> None:
        super().__init__("the flow was cancelled", "cancelled")


@dataclass
class Meter:
    """A tenant's reservations for one flow. Retries only what is safe to retry."""

    call: LedgerCall
    tenant: str
    flow_id: str | None = None
    attempts: int = 4
    backoff: float = 0.25
    stop: threading.Event | None = None  # set when the flow is cancelled

    def _retrying(self, method: str, *args: Any) -> Any:
        for attempt in range(self.attempts):
            try:
                return self.call(method, self.tenant, *args)
            except Exception as error:
                if not _refusal(error) or error.status != 503 or attempt == self.attempts - 1:
                    raise
                time.sleep(self.backoff * 2**attempt)
        raise AssertionError("unreachable")

    def reserve(self, model: str, input_tokens: int, output_tokens: int, agent: str | None = None) -> str:
        """Held under the agent's budget level too, when the agent is named."""
        if self.stop is not None and self.stop.is_set():
            raise FlowCancelled()
        try:
            found = self._retrying("reserve", model, input_tokens, output_tokens, None, {"agent": agent})
        except Exception as error:
            if not _refusal(error):
                raise
            if error.code == "budget_exceeded":
                raise BudgetExceeded(error.message, **error.details) from error
            raise MeteringError(error.message, error.code, **error.details) from error
        return found["reservation_id"]

    def settle(self, reservation_id: str, usage: dict[str, Any]) -> dict[str, Any] | None:
        """Settling twice is refused with 409 `reservation_closed`: a retry after a lost answer is safe."""
        try:
            return self._retrying("settle", reservation_id, usage)
        except Exception as error:
            if not _refusal(error):
                raise
            if error.code == "reservation_closed" and error.details.get("state") == "settled":
                return None
            raise

    def release(self, reservation_id: str) -> None:
        try:
            self._retrying("release", reservation_id)
        except Exception as error:  # it expires after its TTL anyway
            if not _refusal(error):
                raise
            log.warning("could not release reservation %s: %s", reservation_id, error.message)


def estimate_input_tokens(messages: Any, tools: Any = None) -> int:
    """One token per four characters of the prompt and tool schemas, rounded up (a safe over-count
    for English text on current tokenizers; the settle records the provider's real count)."""
    if isinstance(messages, str):
        chars = len(messages)
    else:
        chars = 0
        for message in messages or []:
            content = message.get("content") if isinstance(message, dict) else message
            chars += len(content if isinstance(content, str) else json.dumps(content, default=str))
    if tools:
        chars += len(json.dumps(tools, default=str))
    return (chars + 3) // 4


def _usage_of(llm: BaseLLM) -> tuple[int, int, int]:
    summary = llm.get_token_usage_summary()
    return summary.prompt_tokens, summary.completion_tokens, summary.cached_prompt_tokens


class MeteredLLM(BaseLLM):
    """Wraps any crewai LLM; the ledger prices the wrapped model's name."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    llm_type: str = "metered"
    inner: BaseLLM
    meter: Meter
    agent: str | None = None
    output_cap: int = DEFAULT_OUTPUT_CAP
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @classmethod
    def wrap(cls, inner: BaseLLM, meter: Meter, agent: str | None = None) -> "MeteredLLM":
        cap = int(inner.max_tokens) if inner.max_tokens else DEFAULT_OUTPUT_CAP
        inner.max_tokens = cap  # the provider enforces what was reserved: a settle can never exceed it
        return cls(model=inner.model, inner=inner, meter=meter, agent=agent, output_cap=cap, stop=list(inner.stop))

    def call(self, messages, tools=None, callbacks=None, available_functions=None, from_task=None,
             from_agent=None, response_model=None):
        estimated = estimate_input_tokens(messages, tools)
        agent = _name(self.agent or getattr(from_agent, "role", None))
        with self._lock:  # one call at a time per instance: the usage delta below is this call's
            reservation = self.meter.reserve(self.inner.model, estimated, self.output_cap, agent)
            before = _usage_of(self.inner)
            self.inner.stop = list(self.stop)
            try:
                result = self.inner.call(messages, tools, callbacks, available_functions, from_task, from_agent,
                                         response_model)
            except BaseException:
                self.meter.release(reservation)
                raise
            after = _usage_of(self.inner)
            prompt, completion, cached = (a - b for a, b in zip(after, before))
            if prompt == 0 and completion == 0:  # the provider reported nothing: count it ourselves
                prompt, completion, cached = estimated, estimate_input_tokens(str(result)), 0
            self._track_token_usage_internal({
                "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                "cached_tokens": cached,
            })
            self.meter.settle(reservation, {
                "input_tokens": prompt, "output_tokens": completion, "cached_tokens": min(cached, prompt),
                "agent": agent,
                "task": _name(getattr(from_task, "name", None) or getattr(from_task, "description", None)),
                "flow_id": self.meter.flow_id,
            })
            return result

    def get_input_tokens_count(self, messages, tools=None, response_model=None) -> int:
        return estimate_input_tokens(messages, tools)

    def supports_function_calling(self) -> bool:
        check = getattr(self.inner, "supports_function_calling", None)
        return bool(check()) if callable(check) else False

    def supports_stop_words(self) -> bool:
        return self.inner.supports_stop_words()

    def get_context_window_size(self) -> int:
        return self.inner.get_context_window_size()


def _name(value: Any) -> str | None:
    if not value:
        return None
    return str(value).strip().splitlines()[0][:200] or None
