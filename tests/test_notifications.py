"""The original service's notification helpers, through the EventHub actors."""
from __future__ import annotations

import pytest

from actors.event_hub.client import EventHubClient
from actors.event_hub.notifications import StreamNotifier

pytestmark = pytest.mark.integration


async def test_helpers_publish_the_original_payloads(ray_session, db_url, backend, tenant):
    hub = EventHubClient(db_url, 2, kind=f"test-{backend}-event-hub")
    notify = StreamNotifier(hub, tenant)
    seqs = [
        await notify.send_flow_update("f1", {"status": "running", "phase": "data_validation", "progress": 50}),
        await notify.send_agent_insight("f1", "Data Validation Agent", {"type": "phase_started", "message": "go"}),
        await notify.send_error_notification("f1", {"phase": "validation", "message": "Data validation failed"}),
        await notify.send_completion_notification("f1", {"applications": 3}),
    ]
    assert seqs == [1, 2, 3, 4]
    page = await hub.read(tenant, 0)
    assert [(e.type, e.data) for e in page["events"]] == [
        ("flow_update", {"status": "running", "phase": "data_validation", "progress": 50}),
        ("agent_insight", {"agent_name": "Data Validation Agent", "insight": {"type": "phase_started", "message": "go"}}),
        ("error_notification", {"error": {"phase": "validation", "message": "Data validation failed"}}),
        ("flow_completed", {"results": {"applications": 3}}),
    ]
    with pytest.raises(ValueError, match="unknown stream event type"):
        await notify.publish("made_up", "f1", {})
    assert (await hub.presence(tenant)) == {"connections": 0, "flows": {}, "replicas": 0}
    stats = await hub.stats()
    assert len(stats) == 2 and sum(s["appended"] for s in stats) >= 4
