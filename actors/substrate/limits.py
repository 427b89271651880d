"""A tenant's quotas and rate limits: what they are, their defaults, and where shards read them.

`Limits` is the whole set for one tenant: the deployment's defaults (settings, RAYTENANT_LIMITS)
with the operator's per-tenant overrides on top (`PUT /v1/admin/tenants/{tenant}/limits`, stored in
the tenant_limits table). Each limit is enforced where the state it bounds lives, so no count is
ever split between two owners:

- request and publish rates: token buckets in the quota shards (actors/quotas/), which replicas
  lease allotments from (actors/quotas/client.py);
- WebSocket connections per tenant: slots in the same quota shards; subscriptions per socket: the
  replica that holds the socket;
- queued messages: the tenant's mailbox shard; stored patterns: its learning shard; event retention:
  its hub shard; running and queued flows and the flow weight: its flow runner.

Every shard reads a tenant's limits through a `LimitsCache`: loaded from storage on first use,
updated at once by the operator's change (pushed to the shard that owns the tenant) and re-read
after `ttl` seconds in any case, so a missed push converges too; the re-reads of all tenants due
are one query, off the request path.
"""
from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Awaitable, Callable, Iterable

from actors.substrate.batching import Batcher

# Route classes that have their own request rate: the first path segment after /v1/.
ROUTE_CLASSES = ("events", "costs", "llm", "learning", "agents", "flows", "other")
# Generous defaults: a deployment tightens them (RAYTENANT_LIMITS) and the operator per tenant.
DEFAULT_RATES = {"events": 1_000.0, "costs": 1_000.0, "llm": 200.0, "learning": 1_000.0, "agents": 1_000.0,
                 "flows": 50.0, "other": 500.0}
MAX_COUNT = 10**9
MAX_RATE = 1e6
MAX_FLOW_WEIGHT = 1_000.0


class LimitsError(ValueError):
    """Limits that cannot be set; `message` says which one and why."""


@dataclass(frozen=True)
class Limits:
    requests_per_second: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_RATES))
    events_per_second: float = 5_000.0
    connections: int = 1_000  # open WebSocket connections of the tenant, cluster-wide
    subscriptions_per_socket: int = 1_000
    queued_messages_per_agent: int = 10_000  # ready and in-flight messages of one agent
    queued_messages: int = 100_000  # of the whole tenant
    patterns: int = 100_000  # stored learning patterns
    event_retention_count: int = 100_000
    event_retention_bytes: int = 1024**3
    event_retention_seconds: int = 30 * 24 * 3600
    running_flows: int = 4
    queued_flows: int = 100
    flow_weight: float = 1.0  # the tenant's share when runners pick the next queued flow

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def rate(self, name: str) -> float:
        """The token-bucket rate (per second) of a rate limit: `requests:<class>` or `events`."""
        if name == "events":
            return self.events_per_second
        return self.requests_per_second[name.split(":", 1)[1]]

    def with_overrides(self, overrides: dict[str, Any]) -> "Limits":
        """These limits with `overrides` on top, validated; raises LimitsError naming the field."""
        return replace(self, **_validated(self, overrides))

    @classmethod
    def from_json(cls, text: str) -> "Limits":
        """The deployment's defaults: RAYTENANT_LIMITS, a JSON object of overrides (empty: built-in)."""
        return cls().with_overrides(json.loads(text)) if text.strip() else cls()


def _positive_rate(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 < value <= MAX_RATE:
        raise LimitsError(f"{name} must be a number of requests per second in (0, {MAX_RATE:.0f}]")
    return float(value)


def _validated(base: Limits, overrides: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(overrides, dict):
        raise LimitsError("limits must be a JSON object")
    known = {f.name for f in fields(Limits)}
    found: dict[str, Any] = {}
    for name, value in overrides.items():
        if name not in known:
            raise LimitsError(f"unknown limit {name!r}; known: {sorted(known)}")
        if name == "requests_per_second":
            if not isinstance(value, dict):
                raise LimitsError(f"requests_per_second must be an object keyed by route class {list(ROUTE_CLASSES)}")
            rates = dict(base.requests_per_second)
            for route_class, rate in value.items():
                if route_class not in ROUTE_CLASSES:
                    raise LimitsError(f"unknown route class {route_class!r}; known: {list(ROUTE_CLASSES)}")
                rates[route_class] = _positive_rate(f"requests_per_second.{route_class}", rate)
            found[name] = rates
        elif name == "events_per_second":
            found[name] = _positive_rate(name, value)
        elif name == "flow_weight":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or not 0 < value <= MAX_FLOW_WEIGHT:
                raise LimitsError(f"flow_weight must be a number in (0, {MAX_FLOW_WEIGHT:.0f}]")
            found[name] = float(value)
        else:
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
                raise LimitsError(f"{name} must be an integer between 0 and {MAX_COUNT}")
            found[name] = value
    return found


LoadMany = Callable[[list[str]], Awaitable[dict[str, dict[str, Any]]]]
READ_BATCH = 500  # tenants per query


class LimitsCache:
    """A shard's view of its tenants' limits: `await of(tenant)`. `load_many(tenants)` returns the
    stored overrides of those that have any; defaults apply to every field not overridden.

    Limits are read on first use and re-read `ttl` seconds later, so a push the shard missed still
    converges. Storage is off the request path as far as it can be:
    - every read waiting at one moment, for any tenants, is one query (a shard serving 1,000 busy
      tenants with one query each re-read 200 tenants a second, each on a connection of its own);
    - a tenant in use keeps its known limits while they are re-read in the background; only a
      tenant not read for over 2 x `ttl` (or never) waits for the read, as a first use does;
    - a re-read takes along those of the other tenants in use that are half-way to due.
    An operator's change pushed meanwhile (`put`) wins over a read that started before it, and a
    read that began before a `forget` is not used: the next use reads again."""

    def __init__(self, load_many: LoadMany | None, defaults: Limits = Limits(), *, ttl: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._load_many, self.defaults, self.ttl, self._clock = load_many, defaults, ttl, clock
        self._cached: dict[str, tuple[float, Limits]] = {}
        self._reads: Batcher[str, dict[str, Any] | None] = Batcher(self._read, max_batch=READ_BATCH)
        # tenant -> (its read under way, the pushes counted when it began); pushes and forgets are
        # counted only while a read is under way, and a read that saw fewer is not used
        self._loading: dict[str, tuple[asyncio.Task, int]] = {}
        self._pushes: dict[str, int] = {}
        self._used: dict[str, float] = {}  # tenant -> when its limits were last asked for
        self._ahead_at = float("-inf")  # when the last read-ahead scan ran

    async def of(self, tenant: str) -> Limits:
        for _ in range(3):
            known = self._known(tenant)
            if known is not None:
                return known
            settled = await asyncio.shield(self._load(tenant))
            found = self._cached.get(tenant)
            if found is not None:
                return found[1]
            if settled:
                break  # storage away and nothing known: the defaults, for this use only
            # forgotten while it was read: read again
        return self.peek(tenant)

    def known(self, tenant: str) -> bool:
        """Whether the tenant's limits were read (or pushed): otherwise `peek` answers the
        defaults, which must not decide anything that cannot be undone, such as a trim."""
        return self._load_many is None or tenant in self._cached

    async def of_many(self, tenants: Iterable[str]) -> dict[str, Limits]:
        """`of` for several tenants: the known ones at once, the reads of the others in one query."""
        found: dict[str, Limits] = {}
        waiting: list[str] = []
        for tenant in dict.fromkeys(tenants):
            known = self._known(tenant)
            if known is None:
                waiting.append(tenant)
            else:
                found[tenant] = known
        if waiting:
            found.update(zip(waiting, await asyncio.gather(*(self.of(tenant) for tenant in waiting))))
        return found

    def _known(self, tenant: str) -> Limits | None:
        """The tenant's limits when they may be used without waiting (a stale entry starts its
        re-read in the background); None when the caller must wait for a read."""
        found = self._cached.get(tenant)
        if self._load_many is None:
            return found[1] if found is not None else self.defaults
        now = self._clock()
        self._used.pop(tenant, None)  # kept in order of use, most recent last
        self._used[tenant] = now
        if found is None:
            return None
        age = now - found[0]
        if age < self.ttl:
            return found[1]
        if age < 2 * self.ttl:
            self._load(tenant)
            self._read_ahead(now)
            return found[1]
        return None

    def _read_ahead(self, now: float) -> None:
        """With one tenant's re-read, start those of the other tenants in use whose limits are
        half-way to due, so they share its query: tenants used at different moments would
        otherwise each be re-read alone (a hub appending for 1,000 tenants made one query per
        append). At most one scan per ttl/4 and READ_BATCH tenants per scan; the scan walks only
        the tenants used in the last 2 x ttl, most recent first, and forgets the older ones."""
        if now - self._ahead_at < self.ttl / 4:
            return
        self._ahead_at = now
        while self._used:
            oldest = next(iter(self._used))
            if now - self._used[oldest] < 2 * self.ttl:
                break
            del self._used[oldest]
        started = 0
        for tenant in reversed(list(self._used)):
            found = self._cached.get(tenant)
            if found is not None and now - found[0] >= self.ttl / 2 and tenant not in self._loading:
                self._load(tenant)
                started += 1
                if started >= READ_BATCH:
                    break

    def peek(self, tenant: str) -> Limits:
        """The limits known now, without loading (the defaults when none are known)."""
        found = self._cached.get(tenant)
        return found[1] if found is not None else self.defaults

    def forget(self, tenant: str) -> None:
        self._cached.pop(tenant, None)
        self._used.pop(tenant, None)
        self._count_push(tenant)

    def put(self, tenant: str, overrides: dict[str, Any] | None) -> Limits:
        """The operator's change, pushed to the shard that owns the tenant: effective at once."""
        limits = self._resolve(overrides)
        self._cached[tenant] = (self._clock(), limits)
        self._count_push(tenant)
        return limits

    def _count_push(self, tenant: str) -> None:
        if tenant in self._loading:
            self._pushes[tenant] = self._pushes.get(tenant, 0) + 1

    def _load(self, tenant: str) -> asyncio.Task:
        """The tenant's read: the one under way, unless a push or forget came after it began."""
        pushes = self._pushes.get(tenant, 0)
        loading = self._loading.get(tenant)
        if loading is not None and loading[1] == pushes:
            return loading[0]
        task = asyncio.create_task(self._load_one(tenant, pushes))
        self._loading[tenant] = (task, pushes)
        return task

    async def _load_one(self, tenant: str, pushes: int) -> bool:
        """Read the tenant's limits; False when the read is not used (a push or forget came
        after it began)."""
        try:
            overrides, failed = await self._reads.submit(tenant), False
        except Exception:  # noqa: BLE001 - storage away: keep what was known
            overrides, failed = None, True
        current = self._pushes.get(tenant, 0) == pushes
        loading = self._loading.get(tenant)
        if loading is not None and loading[0] is asyncio.current_task():
            del self._loading[tenant]
            self._pushes.pop(tenant, None)
        if not current:
            return False  # the operator's push (or a forget) came after this read began
        if failed:
            return True  # the known value stays (its age makes the next use try again), or none is known
        self._cached[tenant] = (self._clock(), self._resolve(overrides))
        return True

    async def _read(self, tenants: list[str]) -> list[dict[str, Any] | None]:
        assert self._load_many is not None
        stored = await self._load_many(sorted(tenants))
        return [stored.get(tenant) for tenant in tenants]

    def _resolve(self, overrides: dict[str, Any] | None) -> Limits:
        if not overrides:
            return self.defaults
        try:
            return self.defaults.with_overrides(overrides)
        except LimitsError:  # stored under other defaults: keep the fields still valid
            valid = {}
            for name, value in overrides.items():
                try:
                    self.defaults.with_overrides({name: value})
                    valid[name] = value
                except LimitsError:
                    continue
            return self.defaults.with_overrides(valid)
