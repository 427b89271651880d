"""ProviderLLM: the crewai LLM for a model the operator configured a provider for (crews/providers.py)."""
from __future__ import annotations

from functools import cached_property
from typing import Any

import crews  # noqa: F401 - switches off crewai telemetry before crewai is imported
from crewai.events.types.llm_events import LLMCallType
from crewai.llms.base_llm import llm_call_context
from pydantic import ConfigDict

from crews.providers import Provider, usage_of
from crews.text_llm import TextProtocolLLM


class ProviderLLM(TextProtocolLLM):
    """A crewai LLM that calls a configured provider through the openai client. MeteredLLM wraps
    it: it sets `max_tokens` to what was reserved, and this class reports the provider's usage."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    llm_type: str = "provider"
    provider: Provider

    @cached_property
    def client(self):
        import openai

        return openai.OpenAI(base_url=self.provider.base_url, api_key=self.provider.api_key or "unset",
                             timeout=self.provider.timeout, max_retries=0)

    def call(self, messages, tools=None, callbacks=None, available_functions=None, from_task=None,
             from_agent=None, response_model=None):
        messages = messages if isinstance(messages, list) else [{"role": "user", "content": messages}]
        with llm_call_context():
            self._emit_call_started_event(messages=messages, tools=tools, callbacks=callbacks,
                                          available_functions=available_functions, from_task=from_task,
                                          from_agent=from_agent)
            options: dict[str, Any] = {"model": self.model, "messages": messages}
            if self.max_tokens:
                options["max_tokens"] = int(self.max_tokens)
            if self.stop:
                options["stop"] = list(self.stop)[:4]
            response = self.client.chat.completions.create(**options)
            answer = response.choices[0].message.content or ""
            counted = usage_of(response.usage)
            usage = {"prompt_tokens": counted["input_tokens"], "completion_tokens": counted["output_tokens"],
                     "cached_tokens": counted["cached_tokens"],
                     "total_tokens": counted["input_tokens"] + counted["output_tokens"]}
            self._track_token_usage_internal(usage)
            self._emit_call_completed_event(response=answer, call_type=LLMCallType.LLM_CALL, from_task=from_task,
                                            from_agent=from_agent, messages=messages, usage=usage)
            return answer
