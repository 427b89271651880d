"""The embedded database and the saved operator token are readable by their owner only."""
from __future__ import annotations

import os

from sqlalchemy import text

from storage.engine import create_engine


async def test_sqlite_files_are_created_private(tmp_path):
    old = os.umask(0o022)  # the usual umask, which would make new files 0644
    try:
        folder = tmp_path / "data"
        engine = create_engine(f"sqlite+aiosqlite:///{folder / 'raytenant.db'}")
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (x INTEGER)"))
            await conn.execute(text("INSERT INTO t VALUES (1)"))
        files = {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()}
        await engine.dispose()
    finally:
        os.umask(old)
    assert folder.stat().st_mode & 0o777 == 0o700
    assert files["raytenant.db"] == 0o600 and files, files
    assert all(mode == 0o600 for mode in files.values()), files  # -wal and -shm take the database's mode


async def test_an_existing_readable_database_is_tightened(tmp_path):
    path = tmp_path / "old.db"
    path.write_bytes(b"")
    path.chmod(0o644)
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    await engine.dispose()
    assert path.stat().st_mode & 0o777 == 0o600
