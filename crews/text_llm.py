"""What the LLMs raytenant drives itself have in common: they speak crewai's ReAct text protocol
(tools as `Action:` lines, no native function calling) and honour stop words."""
from __future__ import annotations

import crews  # noqa: F401 - switches off crewai telemetry before crewai is imported
from crewai.llms.base_llm import BaseLLM


class TextProtocolLLM(BaseLLM):
    def supports_function_calling(self) -> bool:
        return False

    def supports_stop_words(self) -> bool:
        return True

    def get_context_window_size(self) -> int:
        return 128_000
