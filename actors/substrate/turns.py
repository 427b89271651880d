"""Per-tenant turns: a tenant's operations run one at a time, other tenants' proceed meanwhile.

This is the Orleans turn model inside one async shard actor: a lock per active tenant, created on
demand and dropped when nobody holds or waits for it, so memory follows the active tenants.
"""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import AsyncIterator


class TenantTurns:
    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}

    @asynccontextmanager
    async def turn(self, tenant: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(tenant, asyncio.Lock())
        self._users[tenant] = self._users.get(tenant, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._users[tenant] -= 1
            if self._users[tenant] == 0:
                del self._users[tenant]
                del self._locks[tenant]

    def active(self) -> int:
        """Tenants with an operation running or waiting."""
        return len(self._locks)
