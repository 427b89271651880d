"""Budget levels: budgets under a tenant (engagement, user, agent), and the tags a reservation is
held under.

Revision ID: 0008_budget_levels
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0008_budget_levels"
down_revision = "0007_tenant_limits"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "llm_budget_levels",
        sa.Column("tenant", sa.String(128), primary_key=True),
        sa.Column("scope", sa.String(16), primary_key=True),
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("amount_nanos", sa.BigInteger),
        sa.Column("period", sa.String(8), nullable=False),
        sa.Column("mode", sa.String(8), nullable=False),
        sa.Column("thresholds", JSON, nullable=False),
        sa.Column("tpm", sa.BigInteger),
        sa.Column("rpm", sa.BigInteger),
        sa.Column("alert_period", sa.String(10), nullable=False),
        sa.Column("alerted", JSON, nullable=False),
    )
    with op.batch_alter_table("llm_reservations") as batch:
        batch.add_column(sa.Column("engagement", sa.String(200)))
        batch.add_column(sa.Column("user_id", sa.String(200)))
        batch.add_column(sa.Column("agent", sa.String(200)))


def downgrade() -> None:
    with op.batch_alter_table("llm_reservations") as batch:
        batch.drop_column("agent")
        batch.drop_column("user_id")
        batch.drop_column("engagement")
    op.drop_table("llm_budget_levels")
