"""The audit log: who did what to which tenant, when, and how it ended.

Admin actions are appended before they are answered. Refused attempts with a revoked token are
appended in the background, at most one row per token a minute, so a client that keeps retrying a
revoked token cannot flood the table.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from serve_app.auth import Claims
from storage.credentials import CredentialsStore, audit_row

log = logging.getLogger("raytenant.audit")

REFUSAL_WINDOW = 60.0


class Audit:
    def __init__(self, store: CredentialsStore) -> None:
        self.store = store
        self._refused: dict[tuple[str, str], float] = {}  # (tenant, token) -> last appended
        self._pending: set[asyncio.Task] = set()

    async def record(self, actor: str, action: str, tenant: str | None, outcome: str, **detail: Any) -> None:
        row = audit_row(actor, action, tenant, outcome, **detail)
        try:
            await self.store.audit([row])
        except Exception:  # noqa: BLE001 - the action itself took effect; say so in the log at least
            log.exception("audit row not stored: %s", row)

    def refused(self, claims: Claims, reason: str, path: str) -> None:
        now = time.monotonic()
        key = (claims.tenant, claims.jti or f"iat:{claims.iat}")
        if now - self._refused.get(key, -REFUSAL_WINDOW) < REFUSAL_WINDOW:
            return
        self._refused[key] = now
        if len(self._refused) > 10_000:
            self._refused = {k: t for k, t in self._refused.items() if now - t < REFUSAL_WINDOW}
        task = asyncio.get_running_loop().create_task(self.record(
            f"tenant:{claims.tenant}", "request", claims.tenant, reason, jti=claims.jti, user=claims.user, path=path[:200]))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
