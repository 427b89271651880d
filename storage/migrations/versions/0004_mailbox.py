"""Agent mailboxes: messages with delivery state, topic subscriptions.

Revision ID: 0004_mailbox
Revises: 0003_learning
Create Date: 2026-11-25
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004_mailbox"
down_revision = "0003_learning"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "agent_messages",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("receiver", sa.String(128), nullable=False),
        sa.Column("sender", sa.String(128), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("content", JSON, nullable=False),
        sa.Column("correlation_id", sa.String(64)),
        sa.Column("topic", sa.String(128)),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("visible_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_agent_messages_pending", "agent_messages", ["tenant", "state", "created_at"])
    op.create_table(
        "agent_subscriptions",
        sa.Column("tenant", sa.String(128), primary_key=True),
        sa.Column("agent", sa.String(128), primary_key=True),
        sa.Column("topic", sa.String(128), primary_key=True),
    )


def downgrade() -> None:
    op.drop_table("agent_subscriptions")
    op.drop_index("ix_agent_messages_pending", "agent_messages")
    op.drop_table("agent_messages")
