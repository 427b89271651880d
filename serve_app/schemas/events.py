"""Bodies and answers of the event routes (docs/http-api.md, "Events")."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field

from actors.event_hub.notifications import STREAM_TYPES
from serve_app.schemas.base import Answer, Body, Code, Query, clean_text, one_or_many

# A hard ceiling for the schema; the deployment's own (max_events_per_request) is checked by the route.
MOST_EVENTS = 10_000


FlowId = Annotated[str, Field(min_length=1, max_length=128), AfterValidator(clean_text), Code("invalid_flow_id")]


class EventItem(Body):
    """One event to publish to the tenant's stream."""

    body_code = "invalid_events"
    type: Annotated[Literal[tuple(sorted(STREAM_TYPES))], Code("invalid_event_type")]  # type: ignore[valid-type]
    flow_id: FlowId | None = None
    data: Annotated[dict[str, Any], Code("invalid_data")] = {}


EventsBody = one_or_many(EventItem, "events", most=MOST_EVENTS, code="invalid_events", bare_list=True)


class ReplayQuery(Query):
    after: Annotated[int, Field(ge=0)] = 0
    limit: Annotated[int, Field(ge=1, le=1000)] = 100
    flow_id: FlowId | None = None


class Published(Answer):
    seqs: list[int]


class EventsPage(Answer):
    events: list[dict[str, Any]]
    next_after: int
    head: int
    has_more: bool


class Presence(Answer):
    tenant: str
    connections: int
