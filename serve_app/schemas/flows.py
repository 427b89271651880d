"""Bodies and answers of the flow routes (docs/agents.md, "Flows"): what a client may ask for when
it starts a flow or corrects one, checked before anything is stored."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Discriminator, Field, Tag, model_validator

from crews.field_matcher import SchemaError, parse_schema
from crews.profiling import datasets
from serve_app.schemas.base import Answer, Body, BodyError, Code, Query, items_of, one_or_many, refusal, validate

KINDS = ("discovery", "optimization")
PROCESSES = ("sequential", "hierarchical")
STATUSES = ("queued", "initialized", "running", "completed", "failed", "cancelled")
MAX_CORRECTIONS = 200


def _name(value: str) -> str:
    if not 0 < len(value.strip()) <= 200:
        raise ValueError("must be 1-200 characters")
    return value.strip()


def _schema(label: str) -> AfterValidator:
    def check(value: Any) -> Any:
        if value is not None:
            try:
                parse_schema(value, label)
            except SchemaError as error:
                raise ValueError(str(error)) from None
        return value

    return AfterValidator(check)


def _data(value: Any) -> Any:
    return datasets(value)  # ValueError with a message fit for the client


class FlowBody(Body):
    """A flow to run: records (`data`: a list, or an object of named lists) and, for a field
    mapping, the source and target schemas."""

    name: Annotated[str, AfterValidator(_name), Code("invalid_name")]
    kind: Annotated[Literal[KINDS], Code("invalid_kind")] = "discovery"  # type: ignore[valid-type]
    process: Annotated[Literal[PROCESSES], Code("invalid_process")] = "sequential"  # type: ignore[valid-type]
    data: Annotated[Any, AfterValidator(_data), Code("invalid_data")]
    source_schema: Annotated[Any, _schema("source_schema"), Code("invalid_schema")] = None
    target_schema: Annotated[Any, _schema("target_schema"), Code("invalid_schema")] = None

    def spec(self) -> dict[str, Any]:
        """The stored flow input."""
        schemas = {k: v for k, v in (("source_schema", self.source_schema), ("target_schema", self.target_schema))
                   if v is not None}
        return {"name": self.name, "kind": self.kind, "process": self.process, "data": self.data, **schemas}


class MappingCorrection(Body):
    """The field mapping's form; `target_field: null` says the field has no counterpart."""

    body_code = "invalid_correction"
    unknown_code = "invalid_correction"
    source_field: Annotated[str, Field(min_length=1), Code("invalid_correction")]
    target_field: Annotated[str | None, Field(min_length=1), Code("invalid_correction")]


class PhaseCorrection(Body):
    """Any phase's form (crews/decisions.py); `{phase: "field_mapping", item: source, corrected:
    {target_field}}` is the mapping form."""

    body_code = "invalid_correction"
    unknown_code = "invalid_correction"
    phase: Annotated[str, Field(min_length=1, max_length=64), Code("invalid_correction")]
    item: Annotated[str, Field(min_length=1, max_length=500), Code("invalid_correction")]
    corrected: Annotated[dict[str, Any], Code("invalid_correction")]
    raised_codes = ("invalid_correction",)

    @model_validator(mode="after")
    def _mapping_form(self) -> "PhaseCorrection":
        if self.phase == "field_mapping" and (set(self.corrected) != {"target_field"} or not (
                self.corrected["target_field"] is None or isinstance(self.corrected["target_field"], str)
                and self.corrected["target_field"])):
            raise refusal("invalid_correction", "a field_mapping correction is {\"target_field\": name or null}")
        return self


Correction = Annotated[
    Annotated[PhaseCorrection, Tag("phase")] | Annotated[MappingCorrection, Tag("mapping")],
    Discriminator(lambda v: "phase" if isinstance(v, dict) and "phase" in v else "mapping"),
]
CorrectionsBody = one_or_many(Correction, "corrections", most=MAX_CORRECTIONS, code="invalid_body",
                              name="FlowCorrection")


def corrections_of(parsed: Any) -> list[dict[str, Any]]:
    """The corrections of one request, in one form, each item corrected once; the mapping form as
    {source_field, target_field}."""
    items, _ = items_of(parsed)
    found: list[dict[str, Any]] = []
    for item in items:
        if isinstance(item, PhaseCorrection) and item.phase != "field_mapping":
            found.append({"phase": item.phase, "item": item.item, "corrected": item.corrected})
        elif isinstance(item, PhaseCorrection):
            found.append({"source_field": item.item, "target_field": item.corrected["target_field"]})
        else:
            found.append({"source_field": item.source_field, "target_field": item.target_field})
    if len({"phase" in c for c in found}) > 1:
        raise BodyError("invalid_correction", "send field-mapping corrections and other phases' corrections in "
                        "separate requests")
    keys = [(c.get("phase"), c.get("item") or c.get("source_field"), tuple(c.get("corrected", {}))) for c in found]
    if len(set(keys)) != len(keys):
        raise BodyError("invalid_correction", "each item may be corrected once per request")
    return found


def parse_corrections(payload: Any) -> list[dict[str, Any]]:
    return corrections_of(validate(CorrectionsBody, payload))


def parse_flow_request(payload: Any) -> dict[str, Any]:
    return validate(FlowBody, payload).spec()


class FlowsQuery(Query):
    status: Literal[STATUSES] | None = None  # type: ignore[valid-type]
    limit: Annotated[int, Field(ge=1, le=500)] = 50


class Flow(Answer):
    flow_id: str
    status: str


class Flows(Answer):
    flows: list[Flow]
