"""Flows: input, per-phase results and status of each discovery or optimisation flow.

Revision ID: 0005_flows
Revises: 0004_mailbox
Create Date: 2026-11-25
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005_flows"
down_revision = "0004_mailbox"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "flows",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("runner", sa.String(128), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("process", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("phase", sa.String(64)),
        sa.Column("progress", sa.Integer, nullable=False, server_default="0"),
        sa.Column("input", JSON, nullable=False),
        sa.Column("results", JSON, nullable=False),
        sa.Column("error", JSON),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_flows_tenant_created", "flows", ["tenant", "created_at"])
    op.create_index("ix_flows_status", "flows", ["runner", "status"])


def downgrade() -> None:
    op.drop_index("ix_flows_status", "flows")
    op.drop_index("ix_flows_tenant_created", "flows")
    op.drop_table("flows")
