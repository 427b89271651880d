"""Bodies and answers of the operator's routes: tokens, tenants, caps and prices, limits,
revocations, signing keys and the audit log (docs/http-api.md, docs/costs.md, docs/limits.md)."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator

from actors.substrate.limits import MAX_COUNT, MAX_FLOW_WEIGHT, MAX_RATE, ROUTE_CLASSES
from serve_app.auth import JTI_PATTERN
from serve_app.schemas.base import NAME_PATTERN, Answer, Body, Code, Name, PrintableText, Query, refusal

Tenant = Annotated[Name, Code("invalid_tenant")]
Claim = Annotated[PrintableText | None, Code("invalid_claims")]


class MintBody(Body):
    """A token for a tenant; `ttl_seconds` at most the deployment's longest (RAYTENANT_MAX_TOKEN_TTL)."""

    tenant: Tenant
    scopes: Annotated[list[Annotated[str, Field(min_length=1, max_length=64)]] | None,
                      Field(min_length=1, max_length=64), Code("invalid_scopes")] = None
    ttl_seconds: Annotated[int | None, Field(gt=0), Code("invalid_ttl")] = None
    user: Claim = None
    engagement: Claim = None


class TenantBody(Body):
    body_code = "invalid_tenant"
    unknown_code = not_object_code = "invalid_tenant"  # the body is exactly {"tenant": name}
    tenant: Tenant


class TenantsQuery(Query):
    after: Annotated[str, Field(pattern=f"({NAME_PATTERN})|^$")] = ""
    limit: Annotated[int, Field(ge=1, le=500)] = 100


class CapBody(Body):
    """The operator's hard monthly cap in USD; null lifts it."""

    body_code = "invalid_cap"
    monthly_cap: Annotated[float | None, Field(ge=0, le=1e9), Code("invalid_cap")]


PerToken = Annotated[float, Field(ge=0, lt=1), Code("invalid_price")]


class PriceBody(Body):
    """A negotiated price for one model, USD per token."""

    body_code = "invalid_price"
    input_per_token: PerToken
    output_per_token: PerToken
    cached_per_token: PerToken | None = None


Count = Annotated[int, Field(ge=0, le=MAX_COUNT), Code("invalid_limits")]
Rate = Annotated[float, Field(gt=0, le=MAX_RATE), Code("invalid_limits")]


class LimitsBody(Body):
    """The tenant's overrides; a limit not named takes the deployment's default (docs/limits.md)."""

    body_code = "invalid_limits"
    unknown_code = "invalid_limits"
    requests_per_second: Annotated[dict[Literal[ROUTE_CLASSES], Rate], Code("invalid_limits")] | None = None  # type: ignore[valid-type]
    events_per_second: Rate | None = None
    connections: Count | None = None
    subscriptions_per_socket: Count | None = None
    queued_messages_per_agent: Count | None = None
    queued_messages: Count | None = None
    patterns: Count | None = None
    event_retention_count: Count | None = None
    event_retention_bytes: Count | None = None
    event_retention_seconds: Count | None = None
    running_flows: Count | None = None
    queued_flows: Count | None = None
    flow_weight: Annotated[float, Field(gt=0, le=MAX_FLOW_WEIGHT), Code("invalid_limits")] | None = None


def _issued_before(value: str | float) -> float:
    """An ISO-8601 time or epoch seconds, not in the future."""
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
            value = (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()
        except (ValueError, OverflowError):
            raise ValueError("must be an ISO-8601 time") from None
    if not 0 <= value <= datetime.now(timezone.utc).timestamp() + 1.0:
        raise ValueError("must be a past time after 1970")
    return float(value)


class RevocationBody(Body):
    """One token (`{"jti"}`) or every token of the tenant issued before a time (`{"issued_before"}`)."""

    body_code = "invalid_revocation"
    jti: Annotated[str | None, Field(pattern=JTI_PATTERN.pattern), Code("invalid_jti")] = None
    issued_before: Annotated[str | float | None, AfterValidator(lambda v: v if v is None else _issued_before(v)),
                             Code("invalid_issued_before")] = None
    raised_codes = ("invalid_revocation",)

    @model_validator(mode="after")
    def _one_of(self) -> "RevocationBody":
        if (self.jti is None) == (self.issued_before is None):
            raise refusal("invalid_revocation", "send {\"jti\": ...} or {\"issued_before\": ...}")
        return self


class RotateBody(Body):
    retire_after_seconds: Annotated[int | None, Field(ge=0), Code("invalid_retire_after")] = None


class AuditQuery(Query):
    after: Annotated[int, Field(ge=0, le=2**62)] = 0
    limit: Annotated[int, Field(ge=1, le=1000)] = 100
    tenant: Annotated[str | None, Field(pattern=NAME_PATTERN), Code("invalid_tenant")] = None


class Minted(Answer):
    token: str
    tenant: str
    expires_at: int
    jti: str
    kid: str | None


class TenantRecord(Answer):
    tenant: str


class TenantsPage(Answer):
    tenants: list[TenantRecord]
    next_after: str | None


class Imported(Answer):
    tenant: str
    rows: Any


class LimitsAnswer(Answer):
    tenant: str
    limits: dict[str, Any]
    overrides: dict[str, Any]


class Revocations(Answer):
    tenant: str


class SigningKey(Answer):
    kid: str


class SigningKeys(Answer):
    keys: list[SigningKey]


class AuditPage(Answer):
    entries: list[dict[str, Any]]
    next_after: int


class Month(Answer):
    month: str


class PriceOverride(Answer):
    model: str
