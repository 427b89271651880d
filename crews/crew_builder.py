"""The discovery and optimisation crews, built for one flow.

Each phase is a task run by its agent, with every earlier task as context. A flow resumed after
its runner died rebuilds the same crew; the tasks of finished phases get their stored output and
stay out of the crew's task list, so the remaining tasks still see them as context and only they
run again.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable

import crews  # noqa: F401 - switches off crewai telemetry before crewai is imported
from crewai import Crew, Process, Task
from crewai.tasks.task_output import TaskOutput

from crews.agents import REGISTRY, build_agent
from crews.flow_context import FlowContext
from crews.phases import phases_of

PROCESSES = {"sequential": Process.sequential, "hierarchical": Process.hierarchical}
LLMFactory = Callable[[str], Any]  # agent key (or "manager") -> the LLM for it (MeteredLLM in flows)
PhaseDone = Callable[[str, TaskOutput], Any]


def build_crew(flow: FlowContext, llm_for: LLMFactory, *, process: str = "sequential",
               on_phase_done: PhaseDone | None = None) -> Crew:
    """The flow's crew, skipping the phases in `flow.results`. `on_phase_done(phase, output)` runs
    in the crew's thread when a phase's task finishes, before the next one starts."""
    if process not in PROCESSES:
        raise ValueError(f"process must be one of {sorted(PROCESSES)}")
    agents, tasks, remaining = [], [], []
    for phase in phases_of(flow.kind):
        agent = build_agent(phase.name, flow, llm_for(phase.name))
        callback = None
        if on_phase_done is not None:
            callback = (lambda name: lambda output: on_phase_done(name, output))(phase.name)
        with warnings.catch_warnings():  # phases are persisted by the runner, not by crewai checkpoints
            warnings.filterwarnings("ignore", message=".*callbacks cannot be serialized.*")
            task = Task(name=phase.name, description=phase.task + flow.prompts.get(phase.name, ""),
                        expected_output=phase.expected_output, agent=agent,
                        context=list(tasks), callback=callback)
        if phase.name in flow.results:
            task.output = TaskOutput(description=phase.task, raw=str(flow.results[phase.name].get("summary", "")),
                                     agent=REGISTRY[phase.name].role, name=phase.name)
        else:
            remaining.append(task)
        agents.append(agent)
        tasks.append(task)
    if not remaining:
        raise ValueError("every phase of this flow has finished")
    options: dict[str, Any] = {}
    if process == "hierarchical":
        options["manager_llm"] = llm_for("manager")
    return Crew(agents=agents, tasks=remaining, process=PROCESSES[process], verbose=False, **options)
