"""Replica side of the revocation shards: a local view of every tenant's revocations, kept
current by polling each shard's epoch, so checking a token costs two dict lookups.

Every `poll_interval` (0.25 s) the replica asks each shard for what changed since the epoch it
last saw; a revocation is honoured on every replica within about that interval. If a shard cannot
be reached the replica keeps what it knew and asks again at the next poll.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

from actors.revocations.actor import Revocations
from actors.revocations.core import KIND, RevocationError, RevocationOptions, TenantRevocations
from actors.substrate.placement import shard_for
from actors.substrate.shard_client import ShardClient

log = logging.getLogger("raytenant.revocations")


class RevocationClient(ShardClient):
    error_class = RevocationError
    unavailable_code = "revocations_unavailable"
    channel_methods = frozenset({"revoke", "changes", "list", "suspend"})
    poll_interval = 0.25
    poll_timeout = 1.0
    prune_every = 240  # polls: about once a minute

    def __init__(self, database_url: str, shards: int, options: RevocationOptions, *, kind: str = KIND) -> None:
        super().__init__(Revocations, kind, shards, database_url, shards, options)
        self.tenants: dict[str, TenantRevocations] = {}
        self._seen: dict[int, tuple[str | None, int]] = {s: (None, 0) for s in range(shards)}
        self._poller: asyncio.Task | None = None
        self.polls = 0
        # Told which tenants a poll changed (the replica closes their revoked sockets).
        self.on_change: Callable[[set[str]], None] | None = None

    def revoked(self, tenant: str, iat: float, jti: str | None) -> bool:
        found = self.tenants.get(tenant)
        return found is not None and found.refuses(iat, jti)

    def suspended(self, tenant: str) -> bool:
        found = self.tenants.get(tenant)
        return found is not None and found.suspended

    async def start(self, timeout: float = 60.0) -> None:
        """Create the shards, take their state once (so no revoked token passes after a replica
        starts), then keep polling."""
        await super().start(timeout)
        await self.poll()
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(self._poll_forever())

    async def poll(self) -> None:
        await asyncio.gather(*(self._poll_shard(s) for s in range(self.shards)))
        self.polls += 1

    async def _poll_shard(self, shard: int) -> None:
        """A shard that does not answer within `poll_timeout` is asked again at the next poll; the
        others' revocations do not wait for it."""
        incarnation, epoch = self._seen[shard]
        try:
            [answer] = await asyncio.wait_for(self._flush(shard, [("changes", "", (epoch, incarnation))]),
                                              self.poll_timeout)
        except asyncio.TimeoutError:
            log.warning("revocation shard %d did not answer in %.1f s; keeping what is known", shard, self.poll_timeout)
            return
        if "error" in answer:
            log.warning("revocation shard %d did not answer (%s); keeping what is known", shard,
                        answer["error"].get("code"))
            return
        found = answer["ok"]
        if found["full"]:
            for tenant in [t for t in self.tenants if shard_for(t, self.shards) == shard]:
                del self.tenants[tenant]
            for tenant, state in found["tenants"].items():
                self.tenants[tenant] = TenantRevocations.from_dict(state)
            changed = set(found["tenants"])
        else:
            for tenant, change in found["changes"]:
                self.tenants.setdefault(tenant, TenantRevocations()).change(change)
            changed = {tenant for tenant, _ in found["changes"]}
        self._seen[shard] = (found["incarnation"], found["epoch"])
        if changed and self.on_change is not None:
            self.on_change(changed)

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                await self.poll()
            except Exception:  # noqa: BLE001 - a poll that failed is retried at the next interval
                log.exception("revocation poll failed")
            if self.polls % self.prune_every == 0:
                self.prune(time.time())

    def prune(self, now: float) -> None:
        """Forget revocations whose tokens have all expired (the shards forget them too, without
        telling: the pruned state is the same on both sides)."""
        for tenant in [t for t, r in self.tenants.items() if r.prune(now)]:
            del self.tenants[tenant]

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()

    def stats(self) -> dict[str, Any]:
        return {"tenants_with_revocations": len(self.tenants), "polls": self.polls}
