"""What one flow run shares between its runner and its crew's tools.

A crew runs in a worker thread; its tools read the flow's input from here and record what they
computed, so the runner stores each phase's facts (not the LLM's prose about them) and later
phases build on stored facts, also after a resume.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from crews.profiling import Records

LearningCall = Callable[..., Any]  # synchronous (method, tenant, *args) -> result


@dataclass
class FlowContext:
    tenant: str
    flow_id: str
    kind: str
    data: dict[str, Records]
    source_schema: Any = None
    target_schema: Any = None
    source_name: str | None = None
    learning: LearningCall | None = None
    results: dict[str, dict[str, Any]] = field(default_factory=dict)  # finished phases, stored
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # phase -> tool -> output, this run
    # phase -> what the tenant taught that applies to it (crews/decisions.py), found before it ran,
    # and the lines it adds to the agent's task
    guidance: dict[str, Any] = field(default_factory=dict)
    prompts: dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, phase: str, tool: str, output: dict[str, Any]) -> None:
        with self._lock:
            self.outputs.setdefault(phase, {})[tool] = output

    def output(self, phase: str, tool: str) -> dict[str, Any] | None:
        with self._lock:
            return self.outputs.get(phase, {}).get(tool)

    def result(self, phase: str) -> dict[str, Any]:
        """A finished phase's stored result; a phase that needs one not yet finished is a bug in
        the crew's order, which the crew builders rule out."""
        if phase not in self.results:
            raise LookupError(f"phase {phase!r} has not finished")
        return self.results[phase]
