"""The original service's notification helpers, on top of the durable event stream.

Same names and payloads as the original WebSocketService (flow_update carries the update dict;
agent_insight the agent name and insight; error_notification the error; flow_completed the
results), but each call appends to the tenant's log and returns the event's seq: what was sent is
replayable, and a tenant is always explicit.
"""
from __future__ import annotations

from typing import Any

from actors.event_hub.client import EventHubClient

STREAM_TYPES = frozenset(
    {"flow_update", "agent_insight", "error_notification", "flow_completed", "budget_alert", "agent_message"}
)


class StreamNotifier:
    def __init__(self, hub: EventHubClient, tenant: str) -> None:
        self.hub = hub
        self.tenant = tenant

    async def publish(self, type_: str, flow_id: str | None, data: dict[str, Any]) -> int:
        if type_ not in STREAM_TYPES:
            raise ValueError(f"unknown stream event type {type_!r}")
        [seq] = await self.hub.append(self.tenant, [{"type": type_, "flow_id": flow_id, "data": data}])
        return seq

    async def send_flow_update(self, flow_id: str, update_data: dict[str, Any]) -> int:
        return await self.publish("flow_update", flow_id, dict(update_data))

    async def send_agent_insight(self, flow_id: str, agent_name: str, insight: dict[str, Any]) -> int:
        return await self.publish("agent_insight", flow_id, {"agent_name": agent_name, "insight": insight})

    async def send_error_notification(self, flow_id: str, error: dict[str, Any]) -> int:
        return await self.publish("error_notification", flow_id, {"error": error})

    async def send_completion_notification(self, flow_id: str, results: dict[str, Any]) -> int:
        return await self.publish("flow_completed", flow_id, {"results": results})
