"""Bodies and answers of the learning and field-mapping routes (docs/learning.md)."""
from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, Field

from serve_app.schemas.base import Answer, Body, Code, Fraction, one_or_many

MAX_ITEMS = 1_000


def _present(value: Any) -> Any:
    if value is None:
        raise ValueError("is required")
    return value


def _required(code: str) -> Any:
    return Annotated[Any, AfterValidator(_present), Code(code)]


Context = Annotated[dict[str, Any], Field(min_length=1), Code("invalid_context")]
FieldName = Annotated[str, Field(min_length=1, max_length=200)]
Original = _required("missing_original")
Corrected = _required("missing_corrected")
Result = _required("missing_result")
SourceName = Annotated[str | None, Field(max_length=200), Code("invalid_source_name")]


class CorrectionItem(Body):
    """A user's correction: what the agent proposed, what the user made of it, and where."""

    original: Original
    corrected: Corrected
    context: Context


class SuccessItem(Body):
    result: Result
    context: Context


CorrectionsBody = one_or_many(CorrectionItem, "corrections", most=MAX_ITEMS, code="invalid_corrections")
SuccessesBody = one_or_many(SuccessItem, "successes", most=MAX_ITEMS, code="invalid_successes")


class RecommendationsBody(Body):
    context: Context
    threshold: Annotated[Fraction | None, Code("invalid_threshold")] = None
    limit: Annotated[int | None, Field(ge=1, le=50), Code("invalid_limit")] = None


class FeedbackBody(Body):
    pattern_id: Annotated[str, Field(min_length=1, max_length=64), Code("invalid_pattern_id")]
    accepted: Annotated[bool, Code("invalid_accepted")]


class MappingBody(Body):
    """Schemas as `{"fields": [{name, type?, samples?}]}`, a list of such objects or of names, or
    `{name: type}`; checked by the matcher (`invalid_schema`)."""

    source_schema: Annotated[Any, Code("invalid_schema")] = None
    target_schema: Annotated[Any, Code("invalid_schema")] = None
    source_name: SourceName = None


class MappingCorrectionBody(Body):
    """A user's correction of one proposed mapping; `target_field: null` says the source field has
    no counterpart."""

    source_field: Annotated[FieldName, Code("invalid_source_field")]
    target_field: Annotated[FieldName | None, Code("invalid_target_field")]
    proposed_target: Annotated[str | None, Field(max_length=200), Code("invalid_proposed_target")] = None
    source_type: Annotated[str | None, Field(max_length=200), Code("invalid_source_type")] = None
    source_name: SourceName = None


class Pattern(Answer):
    pattern_id: str


class Patterns(Answer):
    patterns: list[Pattern]


class LearnedRecommendations(Answer):
    recommendations: list[dict[str, Any]]


class Mapping(Answer):
    mappings: list[dict[str, Any]]


class LearningStats(Answer):
    """The tenant's pattern counts and how often recommendations were accepted."""
