"""Loaded by schemathesis (SCHEMATHESIS_HOOKS) in tests/test_contract.py: the tenant export and
import speak JSON lines, which schemathesis has no serializer for."""
from __future__ import annotations

import json
from typing import Any

import schemathesis


@schemathesis.serializer("application/x-ndjson")
def ndjson_body(_ctx: Any, value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    return value.encode("utf-8", "surrogatepass") if isinstance(value, str) else json.dumps(value).encode()


@schemathesis.deserializer("application/x-ndjson")
def ndjson_answer(_ctx: Any, response: Any) -> list[Any]:
    return [json.loads(line) for line in response.content.splitlines() if line.strip()]
