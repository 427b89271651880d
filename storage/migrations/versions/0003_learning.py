"""The learning engine's patterns.

Revision ID: 0003_learning
Revises: 0002_ledger
Create Date: 2026-11-25
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003_learning"
down_revision = "0002_ledger"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "learning_patterns",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("fingerprint", sa.String(40), nullable=False),
        sa.Column("data", JSON, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("confidence", sa.Float, nullable=False),
        sa.Column("base_confidence", sa.Float, nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("support", sa.Integer, nullable=False, server_default="1"),
        sa.Column("accepted", sa.Integer, nullable=False, server_default="0"),
        sa.Column("rejected", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("tenant", "fingerprint", name="uq_learning_patterns_fingerprint"),
    )
    op.create_index("ix_learning_patterns_tenant_created", "learning_patterns", ["tenant", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_learning_patterns_tenant_created", "learning_patterns")
    op.drop_table("learning_patterns")
