"""Virtual-actor activation: per-tenant state loaded from storage on first use, evicted when idle.

A shard holds many tenants; only the recently used ones stay in memory. `activate` loads all the
missing tenants of a batch with one call to the loader (one query), and eviction drops tenants idle
longer than `idle_seconds` or, beyond `max_tenants`, the least recently used ones. State that is
evicted must be rebuildable from storage: shards only evict what they have already committed.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from contextlib import contextmanager
from typing import Awaitable, Callable, Generic, Iterable, Iterator, TypeVar

S = TypeVar("S")
Loader = Callable[[list[str]], Awaitable[dict[str, S]]]


class ActivationTable(Generic[S]):
    def __init__(
        self,
        loader: Loader[S],
        *,
        idle_seconds: float = 600.0,
        max_tenants: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        busy: Callable[[str], bool] = lambda tenant: False,
    ) -> None:
        self._loader = loader
        self._busy = busy  # a busy tenant (uncommitted changes in flight) is never evicted
        self._states: OrderedDict[str, S] = OrderedDict()
        self._last_used: dict[str, float] = {}
        self.idle_seconds = idle_seconds
        self.max_tenants = max_tenants
        self._clock = clock
        self.activations = 0
        self.evictions = 0

    def __contains__(self, tenant: str) -> bool:
        return tenant in self._states

    def __len__(self) -> int:
        return len(self._states)

    def names(self) -> list[str]:
        """The active tenants, least recently used first (a copy: safe to activate while iterating)."""
        return list(self._states)

    def peek(self, tenant: str) -> S | None:
        """The state if active, without touching it or loading it."""
        return self._states.get(tenant)

    def forget(self, tenant: str) -> bool:
        """Drop the tenant now, busy or not: its data was purged, or imported under it (the next
        use loads what storage holds). Returns whether it was active."""
        self._last_used.pop(tenant, None)
        return self._states.pop(tenant, None) is not None

    def touch(self, tenant: str) -> S:
        state = self._states[tenant]
        self._states.move_to_end(tenant)
        self._last_used[tenant] = self._clock()
        return state

    async def activate(self, tenants: Iterable[str]) -> dict[str, S]:
        """The states of `tenants`, loading the inactive ones together."""
        wanted = list(dict.fromkeys(tenants))
        missing = [t for t in wanted if t not in self._states]
        for _ in range(3):
            if not missing:
                break
            loaded = await self._loader(missing)
            for tenant in missing:
                if tenant not in self._states:  # another turn may have loaded it meanwhile
                    self._states[tenant] = loaded[tenant]
                    self._last_used[tenant] = self._clock()
                    self.activations += 1
            # Another activation may have evicted (or a forget dropped) some of `wanted` while this
            # one loaded: they are loaded again, never put back from before.
            missing = [t for t in wanted if t not in self._states]
        if missing:
            raise RuntimeError(f"{len(missing)} tenants kept leaving memory while they were activated")
        found = {t: self.touch(t) for t in wanted}
        self.evict()
        return found

    def evict(self, keep: Iterable[str] = ()) -> list[str]:
        """Drop idle tenants and, above max_tenants, the least recently used. Returns who left.

        The table is kept in least-recently-used order, so the scan stops at the first tenant that
        is neither idle nor over the limit: eviction costs O(evicted), not O(active).
        """
        keep = set(keep)
        now = self._clock()
        gone: list[str] = []
        for tenant in self._states:
            over = len(self._states) - len(gone) > self.max_tenants
            idle = now - self._last_used[tenant] > self.idle_seconds
            if not (over or idle):
                break
            if tenant not in keep and not self._busy(tenant):
                gone.append(tenant)
        for tenant in gone:
            del self._states[tenant]
            del self._last_used[tenant]
        self.evictions += len(gone)
        return gone


class InFlight:
    """Tenants with uncommitted changes in flight. Pass `busy=in_flight.__contains__` to the
    ActivationTable: reloading such a tenant from storage would miss the pending change."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def __contains__(self, tenant: object) -> bool:
        return tenant in self._counts

    @contextmanager
    def hold(self, tenant: str) -> Iterator[None]:
        self._counts[tenant] = self._counts.get(tenant, 0) + 1
        try:
            yield
        finally:
            left = self._counts[tenant] - 1
            if left:
                self._counts[tenant] = left
            else:
                del self._counts[tenant]
