"""Shard leases: one row per shard with the epoch of the copy that may write (fencing).

Revision ID: 0011_shard_leases
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_shard_leases"
down_revision = "0010_tenants"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "shard_leases",
        sa.Column("shard", sa.String(200), primary_key=True),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.Column("holder", sa.String(200), nullable=False),
        sa.Column("taken_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("shard_leases")
