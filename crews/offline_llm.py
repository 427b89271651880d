"""OfflineLLM: a deterministic, rule-based crewai LLM that needs no network.

It speaks crewai's ReAct tool protocol: while the agent has a tool it has not run, it answers with
`Action: <tool>` (so crewai runs the real tool and feeds back the Observation); then it writes the
Final Answer from the observations' summaries. As a hierarchical crew's manager it delegates the
task to the coworker its delegation tool names and answers with that coworker's result.

It reports token counts (a quarter of the characters read and written, like MeteredLLM's estimate)
and emits crewai's LLM call events, so a crew on it is metered and observable like one on a paid
model. Its `model` is a priced model name (gpt-4o-mini by default): costs are what that model would
have charged for the same text.

`llm_for(model)` is the switch: no model (RAYTENANT_LLM unset or "offline") gives an OfflineLLM;
any other model string gives crewai's LLM for that provider.
"""
from __future__ import annotations

import json
import os
import re
import time
from typing import Any

import crews  # noqa: F401 - switches off crewai telemetry before crewai is imported
from crewai.events.types.llm_events import LLMCallType
from crewai.llms.base_llm import BaseLLM, llm_call_context

from crews.metering import estimate_input_tokens
from crews.text_llm import TextProtocolLLM

DEFAULT_MODEL = "gpt-4o-mini"
DELEGATE = "delegate_work_to_coworker"
ASK = "ask_question_to_coworker"
_TOOL = re.compile(r"^Tool Name: (.+?)\s*$", re.M)
_ACTION = re.compile(r"^Action: (.+?)\s*$", re.M)
_COWORKERS = re.compile(r"following coworkers: (.+?)\n")
_TASK = re.compile(r"Current Task: (.*?)(?:\n\nThis is the expected criteria|\Z)", re.S)
_CONTEXT = re.compile(r"This is the context you're working with:\n(.*?)(?:\n\nBegin!|\Z)", re.S)


def _text(message: Any) -> str:
    content = message.get("content") if isinstance(message, dict) else message
    return content if isinstance(content, str) else json.dumps(content, default=str)


def _role(message: Any) -> str:
    return message.get("role", "user") if isinstance(message, dict) else "user"


class OfflineLLM(TextProtocolLLM):
    llm_type: str = "offline"
    calls: int = 0
    latency: float = 0.0  # seconds each call takes, as a provider's would (benches and demos set it)

    def __init__(self, model: str = DEFAULT_MODEL, **options: Any) -> None:
        super().__init__(model=model, **options)

    def call(self, messages, tools=None, callbacks=None, available_functions=None, from_task=None,
             from_agent=None, response_model=None):
        with llm_call_context():
            self._emit_call_started_event(messages=messages, tools=tools, callbacks=callbacks,
                                          available_functions=available_functions, from_task=from_task,
                                          from_agent=from_agent)
            self.calls += 1
            if self.latency > 0:
                time.sleep(self.latency)
            answer = self.respond(messages if isinstance(messages, list) else [{"role": "user", "content": messages}])
            usage = {"prompt_tokens": estimate_input_tokens(messages),
                     "completion_tokens": estimate_input_tokens(answer), "cached_tokens": 0}
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            self._track_token_usage_internal(usage)
            self._emit_call_completed_event(response=answer, call_type=LLMCallType.LLM_CALL, from_task=from_task,
                                            from_agent=from_agent, messages=messages, usage=usage)
            return answer

    def respond(self, messages: list[Any]) -> str:
        """The next ReAct step for this conversation. Pure: the same messages give the same answer."""
        system = "\n".join(_text(m) for m in messages if _role(m) == "system")
        said = [_text(m) for m in messages if _role(m) == "assistant"]
        user = "\n".join(_text(m) for m in messages if _role(m) == "user")
        tools = [_tool_key(t) for t in _TOOL.findall(system)]
        used = [_tool_key(a) for text in said for a in _ACTION.findall(text)]
        observations = [text.split("Observation:", 1)[1].strip() for text in said if "Observation:" in text]
        if DELEGATE in tools:
            if DELEGATE not in used:
                return self._delegate(system, user)
            return f"Thought: I now know the final answer\nFinal Answer: {observations[-1] if observations else ''}"
        for tool in tools:
            if tool not in used and tool != ASK:
                return f"Thought: I should run {tool} on the flow's data.\nAction: {tool}\nAction Input: {{}}"
        return "Thought: I now know the final answer\nFinal Answer: " + _report(observations, user)

    @staticmethod
    def _delegate(system: str, user: str) -> str:
        coworkers = _COWORKERS.search(system)
        names = [n.strip() for n in (coworkers.group(1) if coworkers else "").split(",") if n.strip()]
        task = _TASK.search(user)
        context = _CONTEXT.search(user)
        payload = {"task": (task.group(1) if task else user).strip(), "context": (context.group(1) if context else "").strip(),
                   "coworker": names[0] if names else ""}
        return (f"Thought: {payload['coworker'] or 'A coworker'} owns this task; I will delegate it.\n"
                f"Action: {DELEGATE}\nAction Input: {json.dumps(payload)}")


def _tool_key(name: str) -> str:
    """crewai names a tool by its sanitised name (`delegate_work_to_coworker`) in prompts."""
    return re.sub(r"\W+", "_", name.strip().lower()).strip("_")


def _report(observations: list[str], user: str) -> str:
    """One line per tool result: its first line, which for raytenant's tools is the summary."""
    lines = []
    for text in observations:
        lines.append(text.split("\n", 1)[0][:500])
    if not lines:
        task = _TASK.search(user)
        return f"No tools were needed for: {(task.group(1) if task else user).strip()[:500]}"
    return "\n".join(f"- {line}" for line in lines if line)


def llm_for(model: str | None = None, providers: str = "") -> BaseLLM:
    """The LLM a flow's agents use: RAYTENANT_LLM (or `model`) names a provider model; unset or
    "offline" means the OfflineLLM. A model the operator configured a provider for
    (RAYTENANT_LLM_PROVIDERS, crews/providers.py) is called through that provider, as the gateway
    calls it; any other model string goes to crewai's LLM."""
    name = (model if model is not None else os.environ.get("RAYTENANT_LLM", "")).strip()
    if not name or name == "offline":
        return OfflineLLM()
    if name.startswith("offline:"):
        return OfflineLLM(model=name.split(":", 1)[1])
    from crews.provider_llm import ProviderLLM
    from crews.providers import Providers

    provider = Providers.from_json(providers or os.environ.get("RAYTENANT_LLM_PROVIDERS", "")).for_model(name)
    if provider is not None:
        return ProviderLLM(model=name, provider=provider)
    from crewai import LLM

    return LLM(model=name)
