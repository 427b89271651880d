"""Ledger bounds: reservations declare their token bounds, usage records carry overrun and late
flags, the token's user and engagement, and a gateway call's request hash and answer (for
idempotent retries), budgets hold the operator's cap and the month's overrun.

Revision ID: 0006_ledger_bounds
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006_ledger_bounds"
down_revision = "0005_flows"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("llm_usage") as batch:
        batch.add_column(sa.Column("overrun_nanos", sa.BigInteger, nullable=False, server_default="0"))
        batch.add_column(sa.Column("late", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("user_id", sa.String(200)))
        batch.add_column(sa.Column("engagement", sa.String(200)))
        batch.add_column(sa.Column("request_hash", sa.String(64)))
        batch.add_column(sa.Column("reply", JSON))
    with op.batch_alter_table("llm_budgets") as batch:
        batch.alter_column("amount_nanos", existing_type=sa.BigInteger, nullable=True)
        batch.add_column(sa.Column("cap_nanos", sa.BigInteger))
        batch.add_column(sa.Column("overrun_nanos", sa.BigInteger, nullable=False, server_default="0"))
    with op.batch_alter_table("llm_reservations") as batch:
        batch.add_column(sa.Column("input_tokens", sa.BigInteger))
        batch.add_column(sa.Column("max_output_tokens", sa.BigInteger))


def downgrade() -> None:
    with op.batch_alter_table("llm_reservations") as batch:
        batch.drop_column("max_output_tokens")
        batch.drop_column("input_tokens")
    with op.batch_alter_table("llm_budgets") as batch:
        batch.drop_column("overrun_nanos")
        batch.drop_column("cap_nanos")
    with op.batch_alter_table("llm_usage") as batch:
        batch.drop_column("reply")
        batch.drop_column("request_hash")
        batch.drop_column("engagement")
        batch.drop_column("user_id")
        batch.drop_column("late")
        batch.drop_column("overrun_nanos")
