"""Replica side of the quota shards: leased allotments, so the hot path makes no actor call.

`Allotments` keeps, per (tenant, limit), the tokens this replica leased and has not spent. A
request spends one locally; only when they run out does the replica lease more, and concurrent
requests that find the allotment empty share that one lease. A refusal is remembered until the
shard's `retry_after` has passed, so an aggressor hammering past its limit is refused here, at
no cost to anyone else. Unspent tokens lapse after the lease's ttl: a replica that went quiet
does not keep another replica's share.

If the quota shard cannot be reached, requests are admitted (fail open): a quota outage must not
become an outage of every tenant. The refusals of this replica are counted as metrics.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from actors.quotas.actor import Quotas
from actors.quotas.core import KIND, QuotaError, QuotaOptions
from actors.substrate.metrics import NO_METRICS, MetricSink
from actors.substrate.operations import ActorError
from actors.substrate.shard_client import ShardClient

log = logging.getLogger("raytenant.quotas")

Lease = Callable[[str, str, int, int], Awaitable[dict[str, Any]]]  # (tenant, limit, amount, want)
ADMIT_ROUNDS = 100  # leases one request may wait through (each a channel round trip)


@dataclass
class Allotment:
    tokens: int = 0
    expires: float = 0.0
    refused_until: float = 0.0
    demand: int = 0  # tokens wanted by the requests waiting on `pending`
    pending: asyncio.Future | None = None


class Allotments:
    def __init__(self, lease: Lease, *, clock: Callable[[], float] = time.monotonic,
                 metrics: MetricSink = NO_METRICS) -> None:
        self._lease, self._clock, self.metrics = lease, clock, metrics
        self._table: dict[tuple[str, str], Allotment] = {}
        self.leases = self.admitted = self.refused = 0

    async def admit(self, tenant: str, name: str, amount: int = 1) -> float | None:
        """None when `amount` tokens of limit `name` were spent; else the seconds to wait."""
        key = (tenant, name)
        allotment = self._table.get(key)
        if allotment is None:
            allotment = self._table[key] = Allotment()
        # A request that finds the tokens gone waits for the next lease, as long as the shard grants
        # them: under a burst, the requests that joined a lease after it asked were served by later
        # leases, and a cap of three rounds refused some of a tenant's requests within its limit
        # (6-9 of 500 in a probe, 50 of 500 once in the test suite). The bound only stops a shard that
        # grants nothing and says no wait.
        for _ in range(ADMIT_ROUNDS):
            now = self._clock()
            if now >= allotment.expires:
                allotment.tokens = 0
            if allotment.tokens >= amount:
                allotment.tokens -= amount
                self.admitted += 1
                return None
            if now < allotment.refused_until:
                return self._refuse(name, allotment.refused_until - now)
            if allotment.pending is None:
                allotment.demand = 0
                allotment.pending = asyncio.ensure_future(self._refill(tenant, name, amount, allotment))
            allotment.demand += amount
            pending = allotment.pending
            await asyncio.shield(pending)
        now = self._clock()
        return self._refuse(name, max(0.001, allotment.refused_until - now))

    def _refuse(self, name: str, wait: float) -> float:
        self.refused += 1
        self.metrics.inc("raytenant_limit_refusals", limit=name)
        return wait

    async def _refill(self, tenant: str, name: str, amount: int, allotment: Allotment) -> None:
        await asyncio.sleep(0)  # let every request arriving in this turn add its demand
        want = max(amount, allotment.demand)
        try:
            self.leases += 1
            answer = await self._lease(tenant, name, amount, want)
            now = self._clock()
            if answer["granted"]:
                allotment.tokens = (allotment.tokens if now < allotment.expires else 0) + answer["granted"]
                allotment.expires = now + answer["ttl"]
            else:
                allotment.refused_until = now + answer["retry_after"]
        except ActorError as error:  # the quota shard is away: admit, and ask again next time
            log.warning("quota lease failed (%s): admitting tenant %s", error.code, tenant)
            allotment.tokens += want
            allotment.expires = self._clock() + 0.1
        finally:
            allotment.pending = None


class QuotaClient(ShardClient):
    """Leases rates and connection slots from the tenants' quota shards for one replica."""

    error_class = QuotaError
    unavailable_code = "quotas_unavailable"
    channel_methods = frozenset({"lease", "acquire", "release", "hold", "set_limits", "get_limits", "usage"})
    report_interval = 5.0
    REFUSAL_MEMORY = 0.5  # seconds a tenant at its connection cap is refused without asking

    def __init__(self, database_url: str, shards: int, options: QuotaOptions = QuotaOptions(), *,
                 kind: str = KIND, replica: str = "replica", metrics: MetricSink = NO_METRICS) -> None:
        super().__init__(Quotas, kind, shards, database_url, options)
        self.replica = replica
        self.allotments = Allotments(self._lease, metrics=metrics)
        self.sockets: dict[str, int] = {}  # tenant -> sockets this replica holds
        # tenant -> (until when, the refusal): a tenant at its connection cap is refused here for a
        # moment without asking its shard again; a socket of it closing here ends the moment early.
        self._full: dict[str, tuple[float, dict[str, Any]]] = {}
        self._reporter: asyncio.Task | None = None

    async def _lease(self, tenant: str, name: str, amount: int, want: int) -> dict[str, Any]:
        return await self.call("lease", tenant, self.replica, name, amount, want)

    async def admit(self, tenant: str, name: str, amount: int = 1) -> float | None:
        return await self.allotments.admit(tenant, name, amount)

    def known_refusal(self, tenant: str) -> dict[str, Any] | None:
        """The refusal of `tenant`'s last socket while it is remembered (REFUSAL_MEMORY seconds):
        an aggressor opening sockets past its cap costs no shard call per socket. A slot freed on
        another replica meanwhile is seen that much later."""
        full = self._full.get(tenant)
        if full is None:
            return None
        if time.monotonic() < full[0]:
            return full[1]
        del self._full[tenant]
        return None

    async def open_socket(self, tenant: str) -> dict[str, Any]:
        """A slot for a new socket of `tenant`: {"admitted", "connections", "limit",
        "subscriptions_per_socket"}. Admitted with no per-socket bound when the shard is away."""
        self._ensure_reporter()
        known = self.known_refusal(tenant)
        if known is not None:
            return known
        try:
            answer = await self.call("acquire", tenant, self.replica)
        except ActorError as error:
            log.warning("quota acquire failed (%s): admitting a socket of tenant %s", error.code, tenant)
            answer = {"admitted": True, "connections": None, "limit": None, "subscriptions_per_socket": None}
        if answer["admitted"]:
            self.sockets[tenant] = self.sockets.get(tenant, 0) + 1
        else:
            self._full[tenant] = (time.monotonic() + self.REFUSAL_MEMORY, answer)
        return answer

    async def close_socket(self, tenant: str) -> None:
        self._full.pop(tenant, None)
        left = self.sockets.get(tenant, 0) - 1
        if left > 0:
            self.sockets[tenant] = left
        else:
            self.sockets.pop(tenant, None)
        try:
            await self.call("release", tenant, self.replica, 1)
        except ActorError as error:  # the next report (hold) corrects the shard's count
            log.info("quota release for tenant %s deferred to the next report (%s)", tenant, error.code)

    def _ensure_reporter(self) -> None:
        if self._reporter is None or self._reporter.done():
            self._reporter = asyncio.get_running_loop().create_task(self._report_forever())

    async def _report_forever(self) -> None:
        reported: set[str] = set()
        while True:
            await asyncio.sleep(self.report_interval)
            now = time.monotonic()
            self._full = {tenant: full for tenant, full in self._full.items() if full[0] > now}
            holding = dict(self.sockets)
            tenants = set(holding) | reported
            results = await asyncio.gather(*(self.call("hold", t, self.replica, holding.get(t, 0)) for t in tenants),
                                           return_exceptions=True)
            reported = {t for t, r in zip(tenants, results) if holding.get(t, 0) or isinstance(r, Exception)}

    async def close(self) -> None:
        if self._reporter is not None:
            self._reporter.cancel()
