"""The LLM cost ledger: usage records, monthly budgets, reservations, price overrides.

Revision ID: 0002_ledger
Revises: 0001_events
Create Date: 2026-11-25
"""
import sqlalchemy as sa
from alembic import op

revision = "0002_ledger"
down_revision = "0001_events"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "llm_usage",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("input_tokens", sa.BigInteger, nullable=False),
        sa.Column("output_tokens", sa.BigInteger, nullable=False),
        sa.Column("cached_tokens", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("cost_nanos", sa.BigInteger, nullable=False),
        sa.Column("agent", sa.String(200)),
        sa.Column("task", sa.String(200)),
        sa.Column("flow_id", sa.String(128)),
        sa.Column("idempotency_key", sa.String(200)),
        sa.Column("reservation_id", sa.String(64)),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("tenant", "idempotency_key", name="uq_llm_usage_idempotency"),
    )
    op.create_index("ix_llm_usage_tenant_ts", "llm_usage", ["tenant", "ts"])
    op.create_table(
        "llm_budgets",
        sa.Column("tenant", sa.String(128), primary_key=True),
        sa.Column("month", sa.String(7), primary_key=True),
        sa.Column("amount_nanos", sa.BigInteger, nullable=False),
        sa.Column("alert_threshold", sa.Float, nullable=False),
        sa.Column("used_nanos", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("reserved_nanos", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("alert_sent", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_table(
        "llm_reservations",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False, index=True),
        sa.Column("month", sa.String(7), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("amount_nanos", sa.BigInteger, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "llm_price_overrides",
        sa.Column("tenant", sa.String(128), primary_key=True),
        sa.Column("model", sa.String(200), primary_key=True),
        sa.Column("input_per_token", sa.Float, nullable=False),
        sa.Column("output_per_token", sa.Float, nullable=False),
        sa.Column("cached_per_token", sa.Float),
    )


def downgrade() -> None:
    op.drop_table("llm_price_overrides")
    op.drop_table("llm_reservations")
    op.drop_table("llm_budgets")
    op.drop_index("ix_llm_usage_tenant_ts", "llm_usage")
    op.drop_table("llm_usage")
