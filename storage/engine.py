"""The async engine, built from DATABASE_URL.

PostgreSQL over asyncpg is the production database; SQLite over aiosqlite in a data folder is the
embedded default so `raytenant run` works with nothing installed. SQLite gets WAL mode and a busy
timeout, because several Ray actor processes write to the same file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import event, exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from storage.strict_json import dumps_stored, loads_stored


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


@dataclass(frozen=True)
class PoolLimits:
    """How many PostgreSQL connections one engine may hold, and how long anything may wait.

    Every shard actor and every ingress replica owns engines (a replica two), each holding at most
    `size + overflow` connections, so a deployment holds at most engines x (size + overflow):
    `raytenant run` derives `size` from RAYTENANT_DB_MAX_CONNECTIONS (docs/operations.md). The
    timeouts bound a database outage: a connect that gets no answer, a pool with no free
    connection and a statement that does not return each fail within their limit, and the
    request answers 503 storage_unavailable instead of hanging."""

    size: int = 5
    overflow: int = 5
    connect_timeout: float = 2.0
    pool_timeout: float = 2.0
    statement_timeout: float = 30.0

    @classmethod
    def from_env(cls) -> "PoolLimits":
        size = _env_number("RAYTENANT_DB_POOL_SIZE", cls.size, int, 1)
        return cls(size=size, overflow=_env_number("RAYTENANT_DB_MAX_OVERFLOW", size, int, 0),
                   connect_timeout=_env_number("RAYTENANT_DB_CONNECT_TIMEOUT", cls.connect_timeout, float, 0.01),
                   pool_timeout=_env_number("RAYTENANT_DB_POOL_TIMEOUT", cls.pool_timeout, float, 0.01),
                   statement_timeout=_env_number("RAYTENANT_DB_STATEMENT_TIMEOUT", cls.statement_timeout, float, 0.01))


def _env_number(name: str, default: Any, kind: type, minimum: float) -> Any:
    raw = os.environ.get(name, "")
    value = kind(raw) if raw else default
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, not {raw!r}")
    return value


def pool_size_for(max_connections: int, engines: int) -> int:
    """The per-engine pool size (overflow the same) that keeps `engines` engines within
    `max_connections` connections in all."""
    size = max_connections // (2 * max(1, engines))
    if size < 1:
        raise ValueError(f"{max_connections} connections cannot hold {engines} engines of at least 2 connections")
    return size


def create_engine(url: str | None = None, *, limits: PoolLimits | None = None) -> AsyncEngine:
    """One engine per process; actors create theirs in their own process."""
    url = url or database_url()
    if is_sqlite(url):
        database = make_url(url).database
        if database and database != ":memory:":
            private_file(Path(database))
        engine = create_async_engine(url, json_serializer=dumps_stored, json_deserializer=loads_stored)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    # No pre-ping: it is a round trip per checkout on the commit path. A connection that died is
    # invalidated when its statement fails, and that batch is refused (never half-acknowledged).
    limits = limits or PoolLimits.from_env()
    engine = create_async_engine(
        url, json_serializer=dumps_stored, json_deserializer=loads_stored, pool_size=limits.size, max_overflow=limits.overflow, pool_recycle=3600,
        pool_timeout=limits.pool_timeout,
        connect_args={"timeout": limits.connect_timeout, "command_timeout": limits.statement_timeout,
                      "server_settings": {"plan_cache_mode": "force_custom_plan"}},
    )
    event.listen(engine.sync_engine, "checkout", _closed_by_server)
    return engine


def _closed_by_server(dbapi_connection, _record, _proxy) -> None:
    """A pooled connection the server closed (PostgreSQL restarted, or terminated the session) is
    replaced at checkout instead of failing the first statement that gets it. asyncpg notices the
    close as it happens, so this costs no round trip (a pre-ping would cost one per checkout)."""
    connection = getattr(dbapi_connection, "driver_connection", None)
    if connection is not None and connection.is_closed():
        raise exc.DisconnectionError("the server closed this connection")
