"""Strict JSON: what crosses a boundary or reaches the database is JSON every peer can read.

Python's json module reads and writes NaN, Infinity and 1e400 (as inf), keeps "\\u0000" and lone
surrogates in strings, and recurses until RecursionError on deep nesting. PostgreSQL's jsonb refuses
NaN, "\\u0000" and lone surrogates, browsers refuse NaN, and a RecursionError is a 500. So every
request body, query value, WebSocket frame and stored value goes through `loads` or `check`, which
refuse all of these with a code, and answers go out through `dumps`, which never writes them.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_DEPTH = 64
MAX_INT = 2**63 - 1  # what a BIGINT column and jsonb arithmetic hold
_BAD_CHARS = re.compile("[\x00\ud800-\udfff]")


class StrictJSONError(ValueError):
    """A value that is not strict JSON; `code` is the error code answered to the client."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _refuse_constant(name: str) -> Any:
    raise StrictJSONError("invalid_number", f"{name} is not a JSON number")


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise StrictJSONError("invalid_number", f"{text[:40]} is out of range")
    return value


def _parse_int(text: str) -> int:
    if len(text) > 20:
        raise StrictJSONError("invalid_number", "integers must fit in 64 bits")
    value = int(text)
    if abs(value) > MAX_INT:
        raise StrictJSONError("invalid_number", "integers must fit in 64 bits")
    return value


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_parse_float, parse_int=_parse_int)


def loads(data: str | bytes | bytearray) -> Any:
    """Parse strict JSON; raises StrictJSONError (code `malformed_json`, `invalid_number`,
    `invalid_string` or `too_deep`)."""
    if isinstance(data, (bytes, bytearray)):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise StrictJSONError("malformed_json", "the body is not UTF-8") from error
    try:
        value = _DECODER.decode(data)
    except StrictJSONError:
        raise
    except RecursionError as error:
        raise StrictJSONError("too_deep", f"JSON nested deeper than {MAX_DEPTH} levels") from error
    except ValueError as error:
        raise StrictJSONError("malformed_json", "not valid JSON") from error
    check(value)
    return value


def check(value: Any, max_depth: int = MAX_DEPTH) -> Any:
    """Refuse a Python value that strict JSON cannot carry (iteratively: depth is the point).
    Returns the value, so it can wrap an expression."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if _BAD_CHARS.search(item):
                raise StrictJSONError("invalid_string", "strings may not hold \\u0000 or lone surrogates")
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if abs(item) > MAX_INT:
                raise StrictJSONError("invalid_number", "integers must fit in 64 bits")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise StrictJSONError("invalid_number", "NaN and Infinity are not JSON numbers")
        elif isinstance(item, (list, tuple, dict)):
            if depth > max_depth:
                raise StrictJSONError("too_deep", f"JSON nested deeper than {max_depth} levels")
            if isinstance(item, dict):
                for key, child in item.items():
                    if not isinstance(key, str):
                        raise StrictJSONError("invalid_key", "object keys must be strings")
                    stack.append((key, depth))
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)
        else:
            raise StrictJSONError("invalid_value", f"{type(item).__name__} is not a JSON value")
    return value


def is_clean_text(text: str) -> bool:
    """A query value or name free of \\u0000 and lone surrogates."""
    return _BAD_CHARS.search(text) is None


_SURROGATE = re.compile("[\ud800-\udfff]")


def _stored_int(text: str) -> int | float:
    value = int(text)
    return float(value) if abs(value) > MAX_INT else value


_STORED_DECODER = json.JSONDecoder(parse_int=_stored_int)


def loads_stored(text: str) -> Any:
    """A JSON column read back. PostgreSQL's jsonb writes a float such as 1e19 as the integer
    10000000000000000000; the boundary never lets an integer that large in, so it was a float and
    is read as one (an export of it, which is strict JSON, failed mid-stream without this)."""
    return _STORED_DECODER.decode(text)


def dumps_stored(value: Any) -> str:
    """JSON for a database column: the fast encoder, then the exact walk only when the text shows
    a NUL or a surrogate. The boundary already checked; this keeps a value that slipped past it
    from failing a whole group commit on PostgreSQL (it fails its own operation instead)."""
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except RecursionError as error:
        raise StrictJSONError("too_deep", f"JSON nested deeper than {MAX_DEPTH} levels") from error
    except ValueError as error:
        raise StrictJSONError("invalid_number", str(error)) from error
    if "\\u0000" in text or (not text.isascii() and _SURROGATE.search(text)):
        check(value)
    return text


def dumps(value: Any) -> str:
    """Compact strict JSON; raises StrictJSONError rather than writing NaN or a bad string."""
    check(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
