"""Credentials: signing keys apart from the operator token, token revocations, the audit log.

Revision ID: 0009_credentials
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0009_credentials"
down_revision = "0008_budget_levels"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "signing_keys",
        sa.Column("kid", sa.String(32), primary_key=True),
        sa.Column("secret", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("signs_from", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retire_at", sa.DateTime(timezone=True)),
    )
    op.create_table(
        "token_revocations",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.String(128), nullable=False, index=True),
        sa.Column("jti", sa.String(64)),
        sa.Column("issued_before", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_token_revocations_expires", "token_revocations", ["expires_at"])
    op.create_table(
        "audit_log",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("tenant", sa.String(128)),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("detail", JSON, nullable=False),
    )
    op.create_index("ix_audit_log_tenant", "audit_log", ["tenant", "id"])


def downgrade() -> None:
    op.drop_index("ix_audit_log_tenant", "audit_log")
    op.drop_table("audit_log")
    op.drop_index("ix_token_revocations_expires", "token_revocations")
    op.drop_table("token_revocations")
    op.drop_table("signing_keys")
