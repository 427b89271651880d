"""Declarative tables. Alembic migrations in storage/migrations create them; keep the two in step."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

JSONType = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    """raytenant's tables; Alembic migrations in storage/migrations create them."""


class EventRow(Base):
    """One stream event. (tenant, seq) is the key: seq is assigned per tenant by its EventHub shard."""

    __tablename__ = "events"

    tenant: Mapped[str] = mapped_column(String(128), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    type: Mapped[str] = mapped_column(String(64))
    flow_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    data: Mapped[dict] = mapped_column(JSONType)
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class UsageRow(Base):
    """One metered LLM call. Costs are integer nano-dollars (1e-9 USD): sums and budget checks are
    exact, in SQL and in memory alike."""

    __tablename__ = "llm_usage"
    __table_args__ = (
        UniqueConstraint("tenant", "idempotency_key", name="uq_llm_usage_idempotency"),
        Index("ix_llm_usage_tenant_ts", "tenant", "ts"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(128))
    model: Mapped[str] = mapped_column(String(200))
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    cached_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_nanos: Mapped[int] = mapped_column(BigInteger)
    agent: Mapped[str | None] = mapped_column(String(200), nullable=True)
    task: Mapped[str | None] = mapped_column(String(200), nullable=True)
    flow_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    reservation_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Cost beyond the reservation the call was admitted under (its input was under-estimated).
    overrun_nanos: Mapped[int] = mapped_column(BigInteger, default=0)
    late: Mapped[bool] = mapped_column(Boolean, default=False)  # settled after its reservation expired
    user_id: Mapped[str | None] = mapped_column(String(200), nullable=True)  # from the token's claims
    engagement: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # A gateway call with an Idempotency-Key: what was asked (a retry must ask the same) and the answer.
    request_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reply: Mapped[dict | None] = mapped_column(JSONType, nullable=True)


class BudgetRow(Base):
    """A tenant's month: its own budget (costs:admin) and the operator's hard cap, either unset
    (None), with what is used, reserved and overrun against them. A row exists for every month
    the tenant spent in, budget or not, so month-to-date spend never depends on when a budget was set."""

    __tablename__ = "llm_budgets"

    tenant: Mapped[str] = mapped_column(String(128), primary_key=True)
    month: Mapped[str] = mapped_column(String(7), primary_key=True)  # YYYY-MM
    amount_nanos: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    cap_nanos: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    overrun_nanos: Mapped[int] = mapped_column(BigInteger, default=0)
    alert_threshold: Mapped[float] = mapped_column(Float)
    used_nanos: Mapped[int] = mapped_column(BigInteger, default=0)
    reserved_nanos: Mapped[int] = mapped_column(BigInteger, default=0)
    alert_sent: Mapped[bool] = mapped_column(Boolean, default=False)


class ReservationRow(Base):
    __tablename__ = "llm_reservations"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    month: Mapped[str] = mapped_column(String(7))
    model: Mapped[str] = mapped_column(String(200))
    amount_nanos: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16))  # open | settled | released | expired
    input_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # the declared bounds
    max_output_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # The levels it is held under: engagement and user from the token, agent from the call.
    engagement: Mapped[str | None] = mapped_column(String(200), nullable=True)
    user_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    agent: Mapped[str | None] = mapped_column(String(200), nullable=True)


class BudgetLevelRow(Base):
    """A budget under a tenant: per engagement, user or agent (or tenant-wide, key "all"), by month
    or day, hard or soft, with alert thresholds and TPM/RPM limits. What it used is not stored: it is
    the period's usage with matching tags. Which thresholds alerted this period is."""

    __tablename__ = "llm_budget_levels"

    tenant: Mapped[str] = mapped_column(String(128), primary_key=True)
    scope: Mapped[str] = mapped_column(String(16), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    amount_nanos: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    period: Mapped[str] = mapped_column(String(8))  # month | day
    mode: Mapped[str] = mapped_column(String(8))  # hard | soft
    thresholds: Mapped[list] = mapped_column(JSONType)
    tpm: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    rpm: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    alert_period: Mapped[str] = mapped_column(String(10))  # the period `alerted` belongs to
    alerted: Mapped[list] = mapped_column(JSONType)


class PriceOverrideRow(Base):
    """A tenant's negotiated price for a model, in USD per token, set by the operator."""

    __tablename__ = "llm_price_overrides"

    tenant: Mapped[str] = mapped_column(String(128), primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    input_per_token: Mapped[float] = mapped_column(Float)
    output_per_token: Mapped[float] = mapped_column(Float)
    cached_per_token: Mapped[float | None] = mapped_column(Float, nullable=True)


class PatternRow(Base):
    """A learned pattern: a user's correction or an observed success, with the evidence for it.

    `fingerprint` identifies identical patterns of a tenant: learning one again raises `support`
    instead of adding a row. `confidence` is derived (see actors/learning/) and stored so that
    reads outside the actor see what recommendations use.
    """

    __tablename__ = "learning_patterns"
    __table_args__ = (
        UniqueConstraint("tenant", "fingerprint", name="uq_learning_patterns_fingerprint"),
        Index("ix_learning_patterns_tenant_created", "tenant", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128))
    type: Mapped[str] = mapped_column(String(16))  # correction | success
    fingerprint: Mapped[str] = mapped_column(String(40))
    data: Mapped[dict] = mapped_column(JSONType)
    text: Mapped[str] = mapped_column(Text)
    confidence: Mapped[float] = mapped_column(Float)
    base_confidence: Mapped[float] = mapped_column(Float)
    source: Mapped[str] = mapped_column(String(32))
    support: Mapped[int] = mapped_column(Integer, default=1)
    accepted: Mapped[int] = mapped_column(Integer, default=0)
    rejected: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class MessageRow(Base):
    """One agent message and its delivery state (ready | inflight | acked | dead)."""

    __tablename__ = "agent_messages"
    __table_args__ = (Index("ix_agent_messages_pending", "tenant", "state", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128))
    receiver: Mapped[str] = mapped_column(String(128))
    sender: Mapped[str] = mapped_column(String(128))
    type: Mapped[str] = mapped_column(String(16))
    content: Mapped[dict] = mapped_column(JSONType)
    correlation_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    topic: Mapped[str | None] = mapped_column(String(128), nullable=True)
    state: Mapped[str] = mapped_column(String(8))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    visible_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SubscriptionRow(Base):
    """An agent's subscription to a topic of its tenant."""

    __tablename__ = "agent_subscriptions"

    tenant: Mapped[str] = mapped_column(String(128), primary_key=True)
    agent: Mapped[str] = mapped_column(String(128), primary_key=True)
    topic: Mapped[str] = mapped_column(String(128), primary_key=True)


class FlowRow(Base):
    """One flow: its input, the result of each finished phase, and where it stands.

    status: initialized | running | completed | failed | cancelled. `results` maps a finished
    phase to its stored result, so a flow resumed after its runner died starts after the last.
    `runner` is the runner kind that owns it: deployments sharing a database never run each
    other's flows.
    """

    __tablename__ = "flows"
    __table_args__ = (Index("ix_flows_tenant_created", "tenant", "created_at"), Index("ix_flows_status", "runner", "status"))

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128))
    runner: Mapped[str] = mapped_column(String(128))  # the runner kind (deployment) that owns it
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    process: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    phase: Mapped[str | None] = mapped_column(String(64), nullable=True)
    progress: Mapped[int] = mapped_column(Integer, default=0)
    input: Mapped[dict] = mapped_column(JSONType)
    results: Mapped[dict] = mapped_column(JSONType)
    error: Mapped[dict | None] = mapped_column(JSONType, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class TenantLimitsRow(Base):
    """The operator's overrides of a tenant's quotas and rate limits (actors/substrate/limits.py)."""

    __tablename__ = "tenant_limits"

    tenant: Mapped[str] = mapped_column(String(128), primary_key=True)
    limits: Mapped[dict] = mapped_column(JSONType)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SigningKeyRow(Base):
    """A key that signs tenant tokens (HS256), apart from the operator token. The newest key whose
    `signs_from` has passed signs; every key verifies until its `retire_at` (None: not retired)."""

    __tablename__ = "signing_keys"

    kid: Mapped[str] = mapped_column(String(32), primary_key=True)
    secret: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    signs_from: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    retire_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class TokenRevocationRow(Base):
    """One token (`jti`) or every token of a tenant issued before `issued_before`, refused until
    `expires_at` (the maximum token TTL after the revocation: by then every such token expired)."""

    __tablename__ = "token_revocations"
    __table_args__ = (Index("ix_token_revocations_expires", "expires_at"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    jti: Mapped[str | None] = mapped_column(String(64), nullable=True)
    issued_before: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AuditRow(Base):
    """Who did what to which tenant, when, and how it ended: admin actions and refused attempts."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_tenant", "tenant", "id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(200))  # "operator", or "tenant:<name>" for a tenant token
    action: Mapped[str] = mapped_column(String(64))
    tenant: Mapped[str | None] = mapped_column(String(128), nullable=True)
    outcome: Mapped[str] = mapped_column(String(32))
    detail: Mapped[dict] = mapped_column(JSONType)


class TenantRow(Base):
    """A tenant as the operator knows it: created (explicitly, or when a token is first minted for
    it), active or suspended. A deleted tenant has no row and no data left; tokens issued before its
    deletion stay refused through a revocation."""

    __tablename__ = "tenants"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))  # active | suspended
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ShardLeaseRow(Base):
    """Who may write for a shard: the copy holding the newest epoch. A copy takes the lease (the
    epoch goes one up) when it starts, and every write of that copy checks the epoch in its own
    transaction, so an older copy still running (a partitioned node that came back) commits
    nothing (storage/leases.py)."""

    __tablename__ = "shard_leases"

    shard: Mapped[str] = mapped_column(String(200), primary_key=True)
    epoch: Mapped[int] = mapped_column(BigInteger)
    holder: Mapped[str] = mapped_column(String(200))
    taken_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
