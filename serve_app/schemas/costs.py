"""Bodies and answers of the cost ledger's routes (docs/costs.md, "HTTP API")."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AliasChoices, Field, model_validator

from actors.ledger.levels import MODES, PERIODS, SCOPES, LevelSettings
from actors.ledger.prices import NANOS
from serve_app.schemas.base import (Answer, Body, Code, Fraction, Query, Text, TokenCount, one_or_many, refusal)

MAX_RECORDS = 1_000
MAX_USD = 1e9
Tokens = Annotated[TokenCount, Code("invalid_tokens")]
Tag = Annotated[Text | None, Code("invalid_field")]
Model = Annotated[Text, Code("invalid_model")]


class Usage(Body):
    """What a call used, as the provider reported it."""

    input_tokens: Tokens
    output_tokens: Tokens
    cached_tokens: Tokens = 0
    agent: Tag = None
    task: Tag = None
    flow_id: Tag = None
    idempotency_key: Tag = None
    raised_codes = ("invalid_tokens",)

    @model_validator(mode="after")
    def _cached_within_input(self) -> "Usage":
        if self.cached_tokens > self.input_tokens:
            raise refusal("invalid_tokens", "cached_tokens cannot exceed input_tokens")
        return self


class UsageRecord(Usage):
    """One call's usage, recorded after the fact."""

    model: Model


UsageBody = one_or_many(UsageRecord, "records", most=MAX_RECORDS, code="invalid_records", bare_list=True)


class ReservationBody(Body):
    """A call's worst case, held against every budget until it is settled or released."""

    model: Model
    input_tokens: Annotated[Tokens, Field(validation_alias=AliasChoices("input_tokens", "estimated_input_tokens"))]
    max_output_tokens: Annotated[Tokens, Field(
        validation_alias=AliasChoices("max_output_tokens", "estimated_output_tokens"))]
    ttl_seconds: Annotated[float | None, Field(gt=0, le=86_400), Code("invalid_ttl_seconds")] = None
    agent: Tag = None


class BudgetBody(Body):
    monthly_budget: Annotated[float, Field(gt=0, le=MAX_USD), Code("invalid_budget")]
    alert_threshold: Annotated[Fraction, Code("invalid_threshold")] = 0.8


class LevelBody(Body):
    """A budget level's settings: an amount per period, token and request rates, or both."""

    amount: Annotated[float | None, Field(gt=0, le=MAX_USD), Code("invalid_budget")] = None
    period: Annotated[Literal[PERIODS], Code("invalid_period")] = "month"  # type: ignore[valid-type]
    mode: Annotated[Literal[MODES], Code("invalid_mode")] = "hard"  # type: ignore[valid-type]
    thresholds: Annotated[list[Fraction], Field(max_length=10), Code("invalid_threshold")] = [0.8]
    tpm: Annotated[int | None, Field(gt=0, le=10**12), Code("invalid_limit")] = None
    rpm: Annotated[int | None, Field(gt=0, le=10**12), Code("invalid_limit")] = None
    raised_codes = ("invalid_budget",)

    @model_validator(mode="after")
    def _limits_something(self) -> "LevelBody":
        if self.amount is None and self.tpm is None and self.rpm is None:
            raise refusal("invalid_budget", "a level needs an amount, a tpm or an rpm")
        return self

    def settings(self) -> LevelSettings:
        return LevelSettings(None if self.amount is None else round(self.amount * NANOS), self.period, self.mode,
                             tuple(sorted(set(self.thresholds))), self.tpm, self.rpm)


class SelectModelBody(Body):
    task_type: Annotated[str, Field(min_length=1, max_length=64), Code("invalid_task_type")] = "medium"
    quality_requirement: Annotated[float | None, Field(ge=0, le=1), Code("invalid_quality_requirement")] = None
    cost_constraint: Annotated[float | None, Field(gt=0), Code("invalid_cost_constraint")] = None


class EstimateBody(Body):
    """`{model, input_tokens, output_tokens, cached_tokens?}`, or the original's `{model, tokens}`
    (a total, split 2:1 input to output)."""

    model: Model
    tokens: Tokens | None = None
    input_tokens: Tokens | None = None
    output_tokens: Tokens | None = None
    cached_tokens: Tokens = 0
    raised_codes = ("invalid_tokens",)

    @model_validator(mode="after")
    def _one_form(self) -> "EstimateBody":
        if self.tokens is None and (self.input_tokens is None or self.output_tokens is None):
            raise refusal("invalid_tokens", "send input_tokens and output_tokens, or tokens")
        return self

    def split(self) -> tuple[int, int, int]:
        if self.tokens is not None:
            inp = int(self.tokens * 0.67)
            return inp, self.tokens - inp, 0
        return self.input_tokens or 0, self.output_tokens or 0, self.cached_tokens


# Far enough apart for any summary, near enough that "start = end - 30 days" and every database's
# timestamp type hold it (0001-01-01 minus 30 days was a 500).
EARLIEST = datetime(1970, 1, 1, tzinfo=timezone.utc)
LATEST = datetime(9000, 1, 1, tzinfo=timezone.utc)


def _moment(value: datetime) -> datetime:
    value = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if not EARLIEST <= value <= LATEST:
        raise ValueError(f"must be between {EARLIEST.year} and {LATEST.year}")
    return value


Moment = Annotated[datetime, AfterValidator(_moment)]


class SummaryQuery(Query):
    """`start` before `end` (the route checks it, with its defaults: the last 30 days)."""

    start: Moment | None = None
    end: Moment | None = None


class LevelsQuery(Query):
    scope: Literal[SCOPES] | None = None  # type: ignore[valid-type]


class PricesQuery(Query):
    model: str = ""
    limit: Annotated[int, Field(ge=1, le=500)] = 50


class UsageResult(Answer):
    model: str
    cost: float
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    duplicate: bool


class UsageBatchResult(Answer):
    records: list[UsageResult]
    total_cost: float


class Reservation(Answer):
    reservation_id: str
    model: str
    amount: float
    input_tokens: int
    max_output_tokens: int


class Settled(UsageResult):
    reserved: float
    released: float


class Released(Answer):
    reservation_id: str
    state: str


class Budget(Answer):
    month: str


class Level(Answer):
    scope: str
    key: str


class Levels(Answer):
    levels: list[Level]


class LevelDeleted(Answer):
    deleted: dict[str, str]


class Summary(Answer):
    total_cost: float
    total_tokens: int
    total_requests: int
    by_model: dict[str, Any]


class CostAdvice(Answer):
    recommendations: list[dict[str, Any]]


class ModelChoice(Answer):
    model: str | None


class Estimate(Answer):
    model: str


class Prices(Answer):
    prices: list[dict[str, Any]]
