"""The agent registry: the seven agents, their roles, and their tools bound to a flow.

`build_agent(key, ctx, llm)` makes a crewai Agent whose tools compute from the flow's input (see
crews/phases.py) and record what they found in the FlowContext.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import crews  # noqa: F401 - switches off crewai telemetry before crewai is imported
from crewai import Agent
from crewai.tools import BaseTool
from pydantic import BaseModel, ConfigDict

from crews.flow_context import FlowContext
from crews.phases import KINDS, Phase, ToolSpec, phase_result

OBSERVATION_CHARS = 3_000  # what a tool hands back to the LLM; the full output is kept in the context


@dataclass(frozen=True)
class AgentSpec:
    key: str
    role: str
    goal: str
    backstory: str


REGISTRY: dict[str, AgentSpec] = {spec.key: spec for spec in (
    AgentSpec("data_validation", "Data Validation Specialist",
              "Judge whether imported data is complete, consistent and safe to migrate",
              "A data-quality engineer who has cleaned hundreds of CMDB exports and knows where personal data hides."),
    AgentSpec("application_discovery", "Application Discovery Analyst",
              "Find every application, its infrastructure and what it depends on",
              "An enterprise architect who reads inventories and turns them into dependency maps."),
    AgentSpec("field_mapping", "Field Mapping Specialist",
              "Map source fields to the target schema accurately, using what the team has taught",
              "An integration engineer who remembers every correction a user has made."),
    AgentSpec("risk_assessment", "Migration Risk Assessor",
              "Score migration risks and propose mitigations",
              "A delivery lead who has seen migrations fail and knows the early signs."),
    AgentSpec("migration_strategy", "Migration Strategist",
              "Choose the right 6R strategy for each application",
              "A cloud strategist fluent in rehost, replatform, refactor, repurchase, retire and retain."),
    AgentSpec("cost_optimization", "Cost Optimisation Analyst",
              "Estimate migration and run costs and find savings",
              "A FinOps practitioner who rightsizes before anything moves."),
    AgentSpec("timeline_planning", "Migration Timeline Planner",
              "Plan migration waves over the dependencies and find the critical path",
              "A programme manager who schedules around dependencies and leaves time for testing."),
)}


class NoArguments(BaseModel):
    """The tools read the flow's input from their context: they take no arguments."""

    model_config = ConfigDict(extra="ignore")


class FlowTool(BaseTool):
    """One of a phase's tools, bound to a flow."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    args_schema: type[BaseModel] = NoArguments
    spec: ToolSpec
    phase: str
    flow: FlowContext

    @classmethod
    def bind(cls, spec: ToolSpec, phase: str, flow: FlowContext) -> "FlowTool":
        return cls(name=spec.name, description=spec.description, spec=spec, phase=phase, flow=flow)

    def _run(self, **_: Any) -> str:
        phase = phase_of(self.phase)
        output = phase_result(phase, self.flow) if phase.primary is self.spec else self.spec.compute(self.flow)
        self.flow.record(self.phase, self.name, output)
        return observation(output)


def observation(output: dict[str, Any]) -> str:
    """The tool's answer to the LLM: its summary on the first line, then as much of the data (JSON)
    as fits."""
    data = json.dumps({k: v for k, v in output.items() if k != "summary"}, default=str, separators=(",", ":"))
    text = f"{output.get('summary') or ''}\n{data}"
    return text if len(text) <= OBSERVATION_CHARS else text[: OBSERVATION_CHARS - 14] + "...(truncated)"


def phase_of(key: str) -> Phase:
    for phases in KINDS.values():
        for phase in phases:
            if phase.name == key:
                return phase
    raise KeyError(key)


def build_agent(key: str, flow: FlowContext, llm: Any) -> Agent:
    spec, phase = REGISTRY[key], phase_of(key)
    return Agent(role=spec.role, goal=spec.goal, backstory=spec.backstory, llm=llm,
                 tools=[FlowTool.bind(t, phase.name, flow) for t in phase.tools],
                 allow_delegation=False, max_iter=len(phase.tools) + 3, verbose=False)
