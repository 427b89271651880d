"""Tenant limits: the operator's per-tenant overrides of quotas and rate limits.

Revision ID: 0007_tenant_limits
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007_tenant_limits"
down_revision = "0006_ledger_bounds"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "tenant_limits",
        sa.Column("tenant", sa.String(128), primary_key=True),
        sa.Column("limits", JSON, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("tenant_limits")
