"""CrewAI crews, agents, tools and LLM adapters (see the agent-collaboration issue; not built yet)."""
