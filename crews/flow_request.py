"""What a client may ask for when it starts a flow or corrects its mapping, checked before anything
is stored. Pure (no crewai import): the ingress refuses bad input without an actor call."""
from __future__ import annotations

from typing import Any

from crews.field_matcher import SchemaError, parse_schema
from crews.profiling import datasets

KINDS = ("discovery", "optimization")
PROCESSES = ("sequential", "hierarchical")
MAX_CORRECTIONS = 200


class FlowRequestError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def parse_flow_request(body: Any) -> dict[str, Any]:
    """{name, kind, data, source_schema?, target_schema?, process?} -> the stored flow input."""
    if not isinstance(body, dict):
        raise FlowRequestError("invalid_body", "the body must be a JSON object")
    unknown = set(body) - {"name", "kind", "data", "source_schema", "target_schema", "process"}
    if unknown:
        raise FlowRequestError("unknown_field", f"unknown field(s): {', '.join(sorted(unknown))}")
    name = body.get("name")
    if not isinstance(name, str) or not 0 < len(name.strip()) <= 200:
        raise FlowRequestError("invalid_name", "name must be a string of 1-200 characters")
    kind = body.get("kind", "discovery")
    if kind not in KINDS:
        raise FlowRequestError("invalid_kind", f"kind must be one of {', '.join(KINDS)}")
    process = body.get("process", "sequential")
    if process not in PROCESSES:
        raise FlowRequestError("invalid_process", f"process must be one of {', '.join(PROCESSES)}")
    try:
        named = datasets(body.get("data"))
    except ValueError as error:
        raise FlowRequestError("invalid_data", str(error)) from error
    schemas: dict[str, Any] = {}
    for key in ("source_schema", "target_schema"):
        if body.get(key) is not None:
            try:
                parse_schema(body[key], key)
            except SchemaError as error:
                raise FlowRequestError("invalid_schema", str(error)) from error
            schemas[key] = body[key]
    return {"name": name.strip(), "kind": kind, "process": process, "data": named, **schemas}


def parse_corrections(body: Any) -> list[dict[str, str]]:
    """{source_field, target_field} or {"corrections": [...]} -> the list of corrections."""
    items = body.get("corrections") if isinstance(body, dict) and "corrections" in body else [body]
    if not isinstance(items, list) or not 0 < len(items) <= MAX_CORRECTIONS:
        raise FlowRequestError("invalid_body", f"send one correction or 1-{MAX_CORRECTIONS} as corrections")
    parsed = []
    for item in items:
        if not isinstance(item, dict) or set(item) - {"source_field", "target_field"}:
            raise FlowRequestError("invalid_correction", "a correction is {source_field, target_field}")
        source, target = item.get("source_field"), item.get("target_field")
        if not isinstance(source, str) or not source or not isinstance(target, str) or not target:
            raise FlowRequestError("invalid_correction", "source_field and target_field must be non-empty strings")
        parsed.append({"source_field": source, "target_field": target})
    if len({c["source_field"] for c in parsed}) != len(parsed):
        raise FlowRequestError("invalid_correction", "each source field may be corrected once per request")
    return parsed
