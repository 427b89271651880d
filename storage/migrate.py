"""Apply Alembic migrations (`raytenant db upgrade`, and at service start).

Alembic's env.py runs its own event loop, so `upgrade` is synchronous; async callers run it in a
thread (`await asyncio.to_thread(upgrade, url)`).
"""
from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from storage.engine import database_url

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["database_url"] = url or database_url()
    return config


def upgrade(url: str | None = None, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str | None = None, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)
