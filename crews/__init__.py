"""CrewAI crews, agents, tools and LLM adapters.

Importing this package first switches off crewai's telemetry, tracing and version check: nothing
here may reach the network except a configured LLM provider.
"""
import os

for _name, _value in (
    ("CREWAI_DISABLE_TELEMETRY", "true"),
    ("OTEL_SDK_DISABLED", "true"),
    ("CREWAI_TRACING_ENABLED", "false"),
    ("CREWAI_DISABLE_VERSION_CHECK", "true"),
):
    os.environ.setdefault(_name, _value)
