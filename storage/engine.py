"""The async engine, built from DATABASE_URL.

PostgreSQL over asyncpg is the production database; SQLite over aiosqlite in a data folder is the
embedded default so `raytenant run` works with nothing installed. SQLite gets WAL mode and a busy
timeout, because several Ray actor processes write to the same file.
"""
from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from storage.strict_json import dumps_stored


def data_dir() -> Path:
    """The folder for the embedded database and the generated operator token."""
    return Path(os.environ.get("RAYTENANT_DATA_DIR", "data")).resolve()


def database_url() -> str:
    """DATABASE_URL, or an absolute SQLite path so every Ray worker opens the same file."""
    url = os.environ.get("DATABASE_URL")
    if url:
        return url
    return f"sqlite+aiosqlite:///{data_dir() / 'raytenant.db'}"


def private_file(path: Path) -> Path:
    """Create `path` (and its folder) readable by this user only: a new folder 0700, the file
    0600 from its first byte (an existing one is tightened). SQLite gives its -wal and -shm files
    the database file's mode, so they are private too."""
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_RDONLY, 0o600))  # creates, never truncates or needs write
    if path.stat().st_mode & 0o077 and path.stat().st_uid == os.getuid():
        path.chmod(0o600)
    return path


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def create_engine(url: str | None = None, *, pool_size: int = 5) -> AsyncEngine:
    """One engine per process; actors create theirs in their own process."""
    url = url or database_url()
    if is_sqlite(url):
        database = make_url(url).database
        if database and database != ":memory:":
            private_file(Path(database))
        engine = create_async_engine(url, json_serializer=dumps_stored)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    # No pre-ping: it is a round trip per checkout on the commit path. A connection that died is
    # invalidated when its statement fails, and that batch is refused (never half-acknowledged).
    return create_async_engine(url, json_serializer=dumps_stored, pool_size=pool_size, max_overflow=pool_size, pool_recycle=3600)
