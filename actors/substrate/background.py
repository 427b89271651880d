"""Work a shard does after it answered: what was committed is acknowledged at once, and what
follows from it (an event on the tenant's stream) is sent off the caller's path."""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

log = logging.getLogger("raytenant.shards")


class BackgroundPublisher:
    """Publishes to the tenant's stream off the caller's path: what was committed is answered at
    once, the events follow, retried with back-off, and are logged if the hub stays away."""

    def __init__(self, publish: Callable[[str, Any], Awaitable[Any]] | None, what: str, *,
                 attempts: int = 5, delay: float = 0.2) -> None:
        self.publish, self.what, self.attempts, self.delay = publish, what, attempts, delay
        self._tasks: set[asyncio.Task] = set()

    def send(self, tenant: str, payload: Any) -> None:
        if self.publish is None:
            return
        task = asyncio.create_task(self._send(tenant, payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, tenant: str, payload: Any) -> None:
        for attempt in range(self.attempts):
            try:
                await self.publish(tenant, payload)
                return
            except Exception:  # noqa: BLE001 - retried, then logged
                await asyncio.sleep(self.delay * 2**attempt)
        log.error("%s for tenant %s could not be published", self.what, tenant)
