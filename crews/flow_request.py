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


def parse_corrections(body: Any) -> list[dict[str, Any]]:
    """One correction or {"corrections": [...]}, each either {source_field, target_field} (the
    field mapping, as before; target_field null says the field has no counterpart) or {phase, item, corrected} for any phase (crews/decisions.py); one
    request holds one form. `{phase: "field_mapping", item: source, corrected: {target_field}}` is
    the mapping form. Returns the list; refuses anything else before an actor call."""
    items = body.get("corrections") if isinstance(body, dict) and "corrections" in body else [body]
    if not isinstance(items, list) or not 0 < len(items) <= MAX_CORRECTIONS:
        raise FlowRequestError("invalid_body", f"send one correction or 1-{MAX_CORRECTIONS} as corrections")
    parsed = [_correction(item) for item in items]
    if len({"phase" in c for c in parsed}) > 1:
        raise FlowRequestError("invalid_correction", "send field-mapping corrections and other phases' corrections "
                               "in separate requests")
    keys = [(c.get("phase"), c.get("item") or c.get("source_field"), tuple(c.get("corrected", {}))) for c in parsed]
    if len(set(keys)) != len(keys):
        raise FlowRequestError("invalid_correction", "each item may be corrected once per request")
    return parsed


def _correction(item: Any) -> dict[str, Any]:
    if isinstance(item, dict) and "phase" in item:
        phase, name, corrected = item.get("phase"), item.get("item"), item.get("corrected")
        if set(item) != {"phase", "item", "corrected"} or not isinstance(phase, str) \
                or not isinstance(name, str) or not 0 < len(name) <= 500 or not isinstance(corrected, dict):
            raise FlowRequestError("invalid_correction", "a correction is {phase, item, corrected: {...}}")
        if phase != "field_mapping":
            return {"phase": phase, "item": name, "corrected": corrected}
        if set(corrected) != {"target_field"}:
            raise FlowRequestError("invalid_correction", "a field_mapping correction is {\"target_field\": name}")
        item = {"source_field": name, "target_field": corrected["target_field"]}
    if not isinstance(item, dict) or set(item) - {"source_field", "target_field"}:
        raise FlowRequestError("invalid_correction", "a correction is {source_field, target_field} or {phase, item, corrected}")
    if "target_field" not in item:
        raise FlowRequestError("invalid_correction", "a correction names its target_field (null: no counterpart)")
    source, target = item.get("source_field"), item["target_field"]
    if not isinstance(source, str) or not source or not (target is None or isinstance(target, str) and target):
        raise FlowRequestError("invalid_correction", "source_field must be a non-empty string and target_field a "
                               "non-empty string or null (the field has no counterpart)")
    return {"source_field": source, "target_field": target}
