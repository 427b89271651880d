"""Quota shards: the cluster-wide token buckets and connection slots of each tenant.

A tenant's rate limits (requests per second per route class, events published per second) are
token buckets held here, in the one shard that owns the tenant. Ingress replicas do not ask per
request: they lease allotments (`lease`), a few tokens at a time, and spend them locally
(actors/quotas/client.py). Whatever the number of replicas, the tokens handed out never exceed what
the bucket refills, so a limit holds cluster-wide.

WebSocket connections are slots: a replica `acquire`s one per socket it accepts and `release`s it
when the socket ends. Each replica also reports what it holds (`hold`) every few seconds, and the
slots of a replica that stopped reporting (it died) expire after `slot_ttl`.

`QuotaCore` is the state logic (tests drive it without Ray); `Quotas` is the Ray actor.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

from actors.substrate.limits import ROUTE_CLASSES, Limits, LimitsCache
from actors.substrate.metrics import NO_METRICS, MetricSink
from actors.substrate.operations import ActorError

KIND = "quotas"
RATE_NAMES = frozenset({"events", *(f"requests:{c}" for c in ROUTE_CLASSES)})


class QuotaError(ActorError):
    """A refused quota operation (status, code, message, details)."""


@dataclass(frozen=True)
class QuotaOptions:
    limits: Limits = Limits()  # the deployment's defaults
    lease_fraction: float = 0.05  # an allotment holds this many seconds of the rate (at least the ask)
    lease_ttl: float = 1.0  # a replica drops tokens it has not spent after this
    slot_ttl: float = 15.0  # slots of a replica that has not reported for this long are freed
    limits_ttl: float = 5.0


@dataclass
class Bucket:
    rate: float
    tokens: float
    stamp: float

    @property
    def capacity(self) -> float:
        return max(1.0, self.rate)  # one second of burst

    def refill(self, rate: float, now: float) -> None:
        self.tokens = min(max(1.0, rate), self.tokens + (now - self.stamp) * self.rate)
        self.rate, self.stamp = rate, now


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class QuotaCore:
    def __init__(self, limits: LimitsCache, options: QuotaOptions = QuotaOptions(), *,
                 clock: Callable[[], float] = time.monotonic, metrics: MetricSink = NO_METRICS) -> None:
        self.limits, self.options, self.clock, self.metrics = limits, options, clock, metrics
        self.buckets: dict[tuple[str, str], Bucket] = {}
        self.slots: dict[str, dict[str, int]] = {}  # tenant -> replica -> sockets held
        self.seen: dict[str, float] = {}  # replica -> when it last called
        self.counters = {"leases": 0, "granted": 0, "refused": 0, "sockets_refused": 0}

    # -- rates --------------------------------------------------------------------------------------
    async def lease(self, tenant: str, replica: str, name: str, amount: int, want: int = 0) -> dict[str, Any]:
        """Tokens of bucket `name` for a replica to spend: {"granted", "retry_after", "ttl"}.

        `amount` is what one request needs: granted whole or not at all. A bucket with at least
        `min(amount, capacity)` tokens grants it (and may go below zero: a request larger than a
        second's rate is admitted when the bucket is full, and the tenant then waits for the debt
        to refill). Up to `want` tokens (the replica's waiting requests together) or
        `lease_fraction` seconds of rate are granted when the bucket holds them, so a busy replica
        asks a few times a second, not per request."""
        if name not in RATE_NAMES or not _count(amount) or amount < 1 or not _count(want):
            raise QuotaError(422, "invalid_lease", f"lease a positive amount of one of {sorted(RATE_NAMES)}")
        self.seen[replica] = now = self.clock()
        rate = (await self.limits.of(tenant)).rate(name)
        bucket = self.buckets.get((tenant, name))
        if bucket is None:
            bucket = self.buckets[(tenant, name)] = Bucket(rate, max(1.0, rate), now)
        bucket.refill(rate, now)
        self.counters["leases"] += 1
        need = min(amount, bucket.capacity)
        if bucket.tokens < need:
            self.counters["refused"] += 1
            return {"granted": 0, "retry_after": (need - bucket.tokens) / rate, "ttl": self.options.lease_ttl}
        chunk = max(want, math.ceil(rate * self.options.lease_fraction))
        granted = max(amount, min(math.floor(bucket.tokens), chunk))
        bucket.tokens -= granted
        self.counters["granted"] += granted
        return {"granted": granted, "retry_after": 0.0, "ttl": self.options.lease_ttl}

    # -- connection slots ---------------------------------------------------------------------------
    def _live(self, tenant: str) -> int:
        held = self.slots.get(tenant, {})
        now = self.clock()
        for replica in [r for r in held if now - self.seen.get(r, 0.0) > self.options.slot_ttl]:
            del held[replica]  # that replica stopped reporting: its sockets are gone with it
        return sum(held.values())

    async def acquire(self, tenant: str, replica: str) -> dict[str, Any]:
        """One connection slot for a socket `replica` is opening, if the tenant has one left."""
        self.seen[replica] = self.clock()
        limits = await self.limits.of(tenant)
        open_now = self._live(tenant)
        answer = {"connections": open_now, "limit": limits.connections,
                  "subscriptions_per_socket": limits.subscriptions_per_socket}
        if open_now >= limits.connections:
            self.counters["sockets_refused"] += 1
            return {**answer, "admitted": False}
        held = self.slots.setdefault(tenant, {})
        held[replica] = held.get(replica, 0) + 1
        return {**answer, "connections": open_now + 1, "admitted": True}

    async def release(self, tenant: str, replica: str, count: int = 1) -> None:
        self.seen[replica] = self.clock()
        held = self.slots.get(tenant, {})
        if replica in held:
            held[replica] = max(0, held[replica] - count)
            if not held[replica]:
                del held[replica]
        if not held:
            self.slots.pop(tenant, None)

    async def hold(self, tenant: str, replica: str, count: int) -> None:
        """A replica's report of how many of the tenant's sockets it holds: corrects any drift."""
        self.seen[replica] = self.clock()
        held = self.slots.setdefault(tenant, {})
        if count > 0:
            held[replica] = count
        else:
            held.pop(replica, None)
        if not held:
            self.slots.pop(tenant, None)

    # -- limits -------------------------------------------------------------------------------------
    async def set_limits(self, tenant: str, overrides: dict[str, Any] | None) -> dict[str, Any]:
        return self.limits.put(tenant, overrides).to_dict()

    async def get_limits(self, tenant: str) -> dict[str, Any]:
        return (await self.limits.of(tenant)).to_dict()

    async def usage(self, tenant: str) -> dict[str, Any]:
        """What the tenant holds now: open sockets and the tokens left in each of its buckets."""
        now = self.clock()
        buckets = {}
        for (owner, name), bucket in self.buckets.items():
            if owner == tenant:
                buckets[name] = round(min(bucket.capacity, bucket.tokens + (now - bucket.stamp) * bucket.rate), 3)
        return {"connections": self._live(tenant), "tokens": buckets}

    async def forget(self, tenant: str) -> bool:
        """Drop the tenant's buckets, slots and cached limits (it was deleted)."""
        self.limits.forget(tenant)
        self.slots.pop(tenant, None)
        gone = [key for key in self.buckets if key[0] == tenant]
        for key in gone:
            del self.buckets[key]
        return bool(gone)

    def stats(self) -> dict[str, Any]:
        return {**self.counters, "buckets": len(self.buckets), "tenants_with_sockets": len(self.slots)}
