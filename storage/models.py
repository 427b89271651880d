"""Declarative tables. Alembic migrations in storage/migrations create them; keep the two in step."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, DateTime, String
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

JSONType = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    pass


class EventRow(Base):
    """One stream event. (tenant, seq) is the key: seq is assigned per tenant by its EventHub shard."""

    __tablename__ = "events"

    tenant: Mapped[str] = mapped_column(String(128), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    type: Mapped[str] = mapped_column(String(64))
    flow_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    data: Mapped[dict] = mapped_column(JSONType)
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True))
