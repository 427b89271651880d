"""Tenants as records: their state (active or suspended) and creation time. Every tenant that
already owns data gets a record, active, created now.

Revision ID: 0010_tenants
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_tenants"
down_revision = "0009_credentials"
branch_labels = None
depends_on = None

OWNING = ("events", "llm_usage", "llm_budgets", "llm_budget_levels", "llm_price_overrides", "learning_patterns",
          "agent_messages", "agent_subscriptions", "flows", "tenant_limits")


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    known = " UNION ".join(f"SELECT tenant FROM {table}" for table in OWNING)
    op.execute(f"INSERT INTO tenants (name, state, created_at, updated_at) "
               f"SELECT tenant, 'active', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP FROM ({known}) AS owners")


def downgrade() -> None:
    op.drop_table("tenants")
