"""Field mapping with what a tenant taught: the FieldMatcher fed by the learning engine.

Used by `POST /v1/mappings`, the crews' field-mapping tool and the evaluation bench, so all three
map the same way. `learning` is a `(method, tenant, *args)` callable reaching the tenant's
LearningModel shard: async (`LearningClient.call`) for `map_fields`, synchronous
(`LearningClient.call_sync`) for `map_fields_sync`, which a crew's tool runs in its worker thread.
"""
from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

from crews.field_matcher import Field, FieldMatcher, Learned, check_size, field_context, parse_schema

LearningCall = Callable[..., Awaitable[Any]]
SIMILAR_THRESHOLD = 0.5  # similar-field corrections worth considering (the matcher weighs them)


def _parse(source_schema: Any, target_schema: Any, source_name: str | None):
    sources = parse_schema(source_schema, "source_schema")
    targets = parse_schema(target_schema, "target_schema")  # refused before any actor call
    check_size(sources, targets)
    names = ([f.name for f in sources], [f.name for f in targets])  # what the lessons are selected for
    return sources, targets, [field_context(s, source_name) for s in sources], names


async def map_fields(learning: LearningCall, tenant: str, source_schema: Any, target_schema: Any,
                     source_name: str | None = None, matcher: FieldMatcher | None = None) -> dict[str, Any]:
    """Raises crews.field_matcher.SchemaError for an unusable schema."""
    sources, targets, contexts, names = _parse(source_schema, target_schema, source_name)
    # Only the lessons that decide these fields cross from the shard, however much the tenant taught.
    lessons = await learning("mapping_lessons", tenant, *names)
    similar = await learning("recommendations_many", tenant, contexts, SIMILAR_THRESHOLD, 3)
    learned = Learned.from_corrections(lessons)
    # The matching itself is CPU work: off the event loop, which serves every tenant's requests.
    return await asyncio.to_thread((matcher or FieldMatcher()).match, sources, targets, learned=learned,
                                   recommendations=similar)


def map_fields_sync(learning: Callable[..., Any], tenant: str, source_schema: Any, target_schema: Any,
                    source_name: str | None = None, matcher: FieldMatcher | None = None) -> dict[str, Any]:
    sources, targets, contexts, names = _parse(source_schema, target_schema, source_name)
    lessons = learning("mapping_lessons", tenant, *names)
    similar = learning("recommendations_many", tenant, contexts, SIMILAR_THRESHOLD, 3)
    return (matcher or FieldMatcher()).match(sources, targets, learned=Learned.from_corrections(lessons),
                                             recommendations=similar)


def correction(source: Field, proposed: str | None, correct: str | None,
               source_name: str | None = None) -> dict[str, Any]:
    """The learning item for a user's correction of one proposed mapping (`correct` None: the
    source field has no counterpart)."""
    return {
        "type": "correction",
        "original": {"source_field": source.name, "target_field": proposed},
        "corrected": {"source_field": source.name, "target_field": correct},
        "context": field_context(source, source_name),
    }


def acceptance(source: Field, accepted: str, source_name: str | None = None) -> dict[str, Any]:
    """The learning item for a user's acceptance of a proposed mapping (a success)."""
    return {
        "type": "success",
        "result": {"source_field": source.name, "target_field": accepted},
        "context": field_context(source, source_name),
    }
