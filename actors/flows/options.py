"""The flow runners' kind name and options: what the ingress needs to reach runners, without
importing the crews (and crewai, which takes seconds) that the runners' core runs."""
from __future__ import annotations

from dataclasses import dataclass

from actors.substrate.limits import Limits

KIND = "flows"


@dataclass(frozen=True)
class FlowOptions:
    limits: Limits = Limits()  # the deployment's defaults: running and queued flows, flow weight
    threads: int = 32  # flows running at once in one runner, all tenants together; more are queued
    llm: str = ""  # RAYTENANT_LLM: empty or "offline" for the OfflineLLM, else a provider model string
    llm_latency: float = 0.0  # the OfflineLLM's simulated provider latency per call, in seconds
    llm_providers: str = ""  # RAYTENANT_LLM_PROVIDERS: where a provider model string is called
    sweep_interval: float = 5.0  # how often a runner looks for unfinished flows it owns and no one runs
    max_attempts: int = 5  # starts of one flow (first run and resumes) before it fails as too_many_attempts
    shards: int = 1
    kind: str = KIND  # the runners' actor kind (with the deployment's prefix): whose flows are whose
    niceness: int = 10  # RAYTENANT_FLOW_NICENESS: flows yield the CPU to requests (actors/substrate/os_priority.py)
