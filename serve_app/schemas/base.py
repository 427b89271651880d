"""What every request body and answer is built from.

A body is a strict pydantic model (`Body`: unknown fields refused, no coercion: `1.0` is not an
integer and `true` is not a number, no NaN). Each field names the error code a bad value answers
with, as `Code("invalid_tokens")` in its `Annotated` metadata; a model's own `body_code` answers
when the value is not an object at all, and a check across fields raises `refusal(code, message)`.
`serve_app.requests.parse_body` turns pydantic's first error into that code, so the codes the docs
list are the ones clients get, and `serve_app.contract` reads the same metadata for the OpenAPI
document.
"""
from __future__ import annotations

import types
from functools import lru_cache
from typing import Annotated, Any, ClassVar, Union, get_args, get_origin

from pydantic import AfterValidator, AliasChoices, BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter, ValidationError, create_model
from pydantic_core import PydanticCustomError
from pydantic_core.core_schema import ErrorType

from storage import strict_json

PYDANTIC_ERRORS = frozenset(get_args(ErrorType))
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"  # tenants, agents, topics
MAX_TOKENS = 10**9


class Code:
    """The error code a field answers with when its value is refused."""

    __slots__ = ("code",)

    def __init__(self, code: str) -> None:
        self.code = code

    def __repr__(self) -> str:
        return f"Code({self.code!r})"


class Body(BaseModel):
    """A request body: strict, closed, and refused whole before anything is stored."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
    body_code: ClassVar[str] = "invalid_body"
    unknown_code: ClassVar[str] = "unknown_field"  # a field the model does not take
    not_object_code: ClassVar[str] = "invalid_body"  # the body is not an object at all
    batch_key: ClassVar[str | None] = None  # set on the {key: [...]} models one_or_many makes
    # Codes the model's cross-field checks raise (for the contract; fields carry their own).
    raised_codes: ClassVar[tuple[str, ...]] = ()


class Query(BaseModel):
    """Query parameters: strings converted to their types; parameters not named are ignored."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)
    body_code: ClassVar[str] = "invalid_parameter"
    raised_codes: ClassVar[tuple[str, ...]] = ()


class Answer(BaseModel):
    """An answer's documented fields; answers may carry more (the contract allows them)."""

    model_config = ConfigDict(extra="allow")


def refusal(code: str, message: str) -> PydanticCustomError:
    """A cross-field check's refusal: its type is the code the client gets."""
    return PydanticCustomError(code, message)


def clean_text(value: str) -> str:
    if not strict_json.is_clean_text(value):
        raise ValueError("must not hold \\u0000 or lone surrogates")
    return value


def _printable(value: str) -> str:
    if not value.isprintable():
        raise ValueError("must be printable characters")
    return value


# Texts a client names things with: 1-200 characters (tags, models, ids of other systems).
Text = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(clean_text)]
PrintableText = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_printable)]
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
TokenCount = Annotated[int, Field(ge=0, le=MAX_TOKENS)]
Fraction = Annotated[float, Field(gt=0, le=1)]


def one_or_many(item: Any, key: str, *, most: int, code: str, bare_list: bool = False, name: str = "") -> Any:
    """The body that is one `item`, `{key: [item, ...]}` with 1-`most` items, and with
    `bare_list` also a plain list. `items_of` turns what it parses into (items, was_one)."""
    items = Annotated[list[item], Field(min_length=1, max_length=most), Code(code)]  # type: ignore[valid-type]
    batch = create_model(f"{name or item.__name__}Batch", __base__=Body, **{key: (items, ...)})  # type: ignore[call-overload]
    batch.body_code, batch.batch_key = code, key
    members: list[Any] = [Annotated[batch, Tag("batch")], Annotated[item, Tag("one")]]
    if bare_list:
        members.append(Annotated[items, Tag("list")])

    def which(value: Any) -> str:
        if isinstance(value, dict) and key in value:
            return "batch"
        return "list" if bare_list and isinstance(value, list) else "one"

    return Annotated[Union[tuple(members)], Discriminator(which)]  # type: ignore[valid-type]


def items_of(parsed: Any) -> tuple[list[Any], bool]:
    if isinstance(parsed, list):
        return parsed, False
    key = getattr(type(parsed), "batch_key", None)
    if key is not None:
        return getattr(parsed, key), False
    return [parsed], True


def _stripped(annotation: Any) -> tuple[Any, list[Any]]:
    """An annotation without its Annotated layers, and their metadata."""
    metadata: list[Any] = []
    while get_origin(annotation) is Annotated:
        args = get_args(annotation)
        annotation, metadata = args[0], [*metadata, *args[1:]]
    return annotation, metadata


def _code(metadata: list[Any]) -> str | None:
    codes = [m.code for m in metadata if isinstance(m, Code)]
    return codes[-1] if codes else None


def _field(model: type[BaseModel], key: Any) -> Any:
    """The field a location names: by its name or one of the names it is accepted under."""
    if key in model.model_fields:
        return model.model_fields[key]
    for field in model.model_fields.values():
        alias = field.validation_alias
        if alias == key or isinstance(alias, AliasChoices) and key in alias.choices:
            return field
    return None


def code_at(annotation: Any, loc: tuple[Any, ...], default: str) -> str:
    """The code of the deepest field on `loc` (a pydantic error's location) that names one."""
    code = default
    path = list(loc)
    while True:
        annotation, metadata = _stripped(annotation)
        code = _code(metadata) or code
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            code = getattr(annotation, "body_code", code)
            field = _field(annotation, path[0]) if path else None
            if field is None:
                return code
            path.pop(0)
            code = _code(field.metadata) or code
            annotation = field.annotation
            continue
        origin, args = get_origin(annotation), get_args(annotation)
        if origin in (Union, types.UnionType):
            present = [a for a in args if a is not type(None)]
            if len(present) == 1:  # X | None: pydantic's location does not name the member
                annotation = present[0]
                continue
        if origin in (Union, types.UnionType) and path:
            tagged = {next((m.tag for m in _stripped(a)[1] if isinstance(m, Tag)), None): a for a in args}
            if path[0] in tagged:
                annotation = tagged[path.pop(0)]
                continue
            return code
        if origin in (list, tuple) and path and isinstance(path[0], int):
            path.pop(0)
            annotation = args[0]
            continue
        if origin is dict and path:
            path.pop(0)
            annotation = args[1]
            continue
        return code


def codes_in(annotation: Any, seen: set[int] | None = None) -> set[str]:
    """Every code a body of this type can answer with (for the contract)."""
    seen = set() if seen is None else seen
    if id(annotation) in seen:
        return set()
    seen.add(id(annotation))
    annotation, metadata = _stripped(annotation)
    found = {m.code for m in metadata if isinstance(m, Code)}
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        found |= {getattr(annotation, "body_code", "invalid_body"), getattr(annotation, "not_object_code", "invalid_body"),
                  *getattr(annotation, "raised_codes", ())}
        if annotation.model_config.get("extra") == "forbid":
            found.add(getattr(annotation, "unknown_code", "unknown_field"))
        for field in annotation.model_fields.values():
            found |= {m.code for m in field.metadata if isinstance(m, Code)}
            found |= codes_in(field.annotation, seen)
        return found
    for arg in get_args(annotation):
        found |= codes_in(arg, seen)
    return found


def where(loc: tuple[Any, ...], tags: frozenset[str] = frozenset({"batch", "one", "list"})) -> str:
    """`records[3].input_tokens` from pydantic's ('batch', 'records', 3, 'input_tokens')."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part not in tags:
            text += f".{part}" if text else str(part)
    return text


def describe(annotation: Any, errors: list[dict[str, Any]], default: str) -> tuple[str, str]:
    """(code, message) of a refused body: its first error, located."""
    error = errors[0]
    kind, loc = error["type"], tuple(error["loc"])
    if kind not in PYDANTIC_ERRORS:
        code = kind
    elif kind == "extra_forbidden":
        code = getattr(_stripped(annotation)[0], "unknown_code", "unknown_field")
    elif not loc and kind in ("model_type", "model_attributes_type"):
        code = getattr(_stripped(annotation)[0], "not_object_code", "invalid_body")  # not an object at all
    else:
        code = code_at(annotation, loc, default)
    place = where(loc)
    message = error["msg"]
    if kind == "extra_forbidden":
        message = "unknown field"
    return code, f"{place}: {message}" if place else message


class BodyError(ValueError):
    """A refused body: the code and message the client gets (422)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@lru_cache(maxsize=None)
def adapter(annotation: Any) -> TypeAdapter[Any]:
    return TypeAdapter(annotation)


def default_code(annotation: Any) -> str:
    bare, _ = _stripped(annotation)
    return getattr(bare, "body_code", "invalid_body") if isinstance(bare, type) else "invalid_body"


def validate(annotation: Any, payload: Any) -> Any:
    """`payload` (strict JSON, already parsed) as `annotation`, or BodyError with the documented code."""
    try:
        return adapter(annotation).validate_python(payload)
    except ValidationError as error:
        code, message = describe(annotation, error.errors(include_url=False), default_code(annotation))
        raise BodyError(code, message) from None
