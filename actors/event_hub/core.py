"""EventHub: per-tenant event sequencing, durable append, replay and many-tenant long polls.

`EventHubCore` is the plain state logic (tests drive it without Ray); `EventHub` is the Ray actor
shell. A hub shard owns the tenants that hash to it. For each active tenant it keeps the head seq,
the oldest stored seq (floor) and a window of recent events; everything else is in the events table.

Appends go through a group commit: every append that arrives while a transaction is running joins
the next one, and seqs are assigned inside the committer, so a tenant's seqs are gap-free and in
commit order, and an append returns only once its events are committed.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable

from actors.substrate.activation import ActivationTable
from actors.substrate.batching import Batcher
from actors.substrate.limits import Limits, LimitsCache
from actors.substrate.metrics import NO_METRICS, MetricSink
from storage.events import Event, EventStore


KIND = "event-hub"
EventIn = dict[str, Any]  # {"type": str, "flow_id": str | None, "data": dict}
AppendRequest = tuple[str, list[EventIn]]
RETENTION_BATCH = 500  # tenants measured by one retention query
RETENTION_ROWS = 200_000  # stored events measured by one retention query (each sums its rows' sizes)
EARLY_JOIN_TTL = 60.0  # a join kept for a poll that never came (its replica died) is dropped after this


@dataclass(frozen=True)
class HubOptions:
    window: int = 1_000  # recent events kept in memory per active tenant
    limits: Limits = Limits()  # the deployment's defaults: event retention by count, bytes and age
    retention_interval: float = 30.0  # how often retention by bytes and age is enforced
    idle_seconds: float = 600.0  # an idle tenant's state leaves memory after this
    max_tenants: int = 100_000  # active tenants per shard before LRU eviction
    read_limit: int = 1_000  # most events one poll or read returns per tenant
    presence_ttl: float = 15.0  # a replica's presence report expires after this


@dataclass
class TenantLog:
    head: int
    floor: int
    window: deque[Event] = field(default_factory=deque)

    def after(self, seq: int, limit: int) -> list[Event] | None:
        """Events with seq > `seq` from memory, or None when the window does not reach back that far."""
        if seq >= self.head:
            return []
        if not self.window or self.window[0].seq > seq + 1:
            return None
        start = seq + 1 - self.window[0].seq
        return [self.window[i] for i in range(start, min(len(self.window), start + limit))]


class Change:
    """One link of the hub's feed of changes, which waiting polls follow: `done` is set once
    `tenants` changed (a commit stored their events, or a join added them to a poll), and `next`
    is the link after it. A poll that wakes looks only at the tenants of the links it passed, so a
    wake costs what changed, not every tenant the poll holds (a replica's poll holds every tenant
    it has a socket for)."""

    __slots__ = ("done", "tenants", "next")

    def __init__(self) -> None:
        self.done = asyncio.Event()
        self.tenants: Iterable[str] = ()
        self.next: Change | None = None


class EventHubCore:
    def __init__(self, store: EventStore, options: HubOptions = HubOptions(), clock=time.time, *,
                 metrics: MetricSink = NO_METRICS, limits: LimitsCache | None = None) -> None:
        self.store = store
        self.limits = limits or LimitsCache(None, options.limits)
        self.metrics = metrics
        self.options = options
        self.clock = clock
        self.tenants: ActivationTable[TenantLog] = ActivationTable(
            self._load, idle_seconds=options.idle_seconds, max_tenants=options.max_tenants
        )
        self._commits: Batcher[AppendRequest, list[Event]] = Batcher(self._commit, isolate="split")
        self._change = Change()
        self._presence: dict[str, tuple[float, dict[str, dict[str, int]]]] = {}
        self._trims: set[asyncio.Task] = set()
        self._polls: dict[str, dict[str, int]] = {}
        # Joins that arrived before the poll they name registered (a large poll's arguments can
        # take longer to reach the actor than a small join sent after it): {poll_id: (at, cursors)}.
        self._early_joins: dict[str, tuple[float, dict[str, int]]] = {}
        self.appended = 0
        self.retention_trims = 0

    async def _load(self, tenants: list[str]) -> dict[str, TenantLog]:
        bounds = await self.store.bounds(tenants)
        return {
            t: TenantLog(b.head, b.floor, deque(maxlen=self.options.window)) for t, b in bounds.items()
        }

    # -- append -----------------------------------------------------------------------------------
    async def append(self, requests: list[AppendRequest]) -> list[list[Event]]:
        """Append each request's events to its tenant's log; returns them, sequenced, once committed."""
        await self.limits.of_many(tenant for tenant, _ in requests)  # known before the commit trims by retention
        return await self._commits.submit_many(requests)

    async def _commit(self, requests: list[AppendRequest]) -> list[list[Event]]:
        logs = await self.tenants.activate(tenant for tenant, _ in requests)
        # Seqs are counted here and reach the logs only once stored: until then heads, reads and
        # polls show none of them. (A head that ran ahead of the commit let a socket attaching
        # meanwhile start its live feed past events it had not been sent, and never get them.)
        heads = {tenant: log.head for tenant, log in logs.items()}
        now = self.clock()
        events: list[Event] = []
        results: list[list[Event]] = []
        for tenant, items in requests:
            sequenced = []
            for item in items:
                heads[tenant] += 1
                sequenced.append(Event(tenant, heads[tenant], item["type"], item.get("flow_id"), item.get("data") or {}, now))
            events += sequenced
            results.append(sequenced)
        await self.store.append(events)  # on failure nothing was stored and no log changed
        for tenant, head in heads.items():
            logs[tenant].head = head
        trims: dict[str, int] = {}
        for event in events:
            logs[event.tenant].window.append(event)
        for tenant, log in logs.items():
            if not self.limits.known(tenant):
                continue  # its limits could not be read: trim once they are
            floor = log.head - self.limits.peek(tenant).event_retention_count + 1
            if floor > log.floor:
                log.floor = trims[tenant] = floor
        if trims:
            self._trim_later(trims)
        self.appended += len(events)
        self.metrics.inc("raytenant_events_published", len(events))
        self._announce(heads)
        return results

    def _announce(self, tenants: Iterable[str]) -> None:
        """Wake the waiting polls: these tenants changed."""
        change = self._change
        change.tenants = tenants
        change.next = self._change = Change()
        change.done.set()

    def _trim_later(self, floors: dict[str, int]) -> None:
        """Delete trimmed rows off the append path; until then reads below the floor are refused."""
        task = asyncio.create_task(self.store.trim(floors))
        self._trims.add(task)
        task.add_done_callback(self._trims.discard)

    async def enforce_retention(self) -> int:
        """Trim every active tenant's events beyond its retention by bytes and by age (count is
        enforced on append). Returns how many tenants were trimmed. Tenants under the same
        retention are measured together, up to RETENTION_BATCH tenants or RETENTION_ROWS stored
        events to a query; what was decided is trimmed even if a later query fails."""
        now = self.clock()
        logs: dict[str, TenantLog] = {}
        for tenant in self.tenants.names():
            log = self.tenants.peek(tenant)
            if log is not None and log.head >= log.floor:
                logs[tenant] = log
        limits = await self.limits.of_many(logs)
        logs = {tenant: log for tenant, log in logs.items() if self.limits.known(tenant)}
        alike: dict[tuple[int, int], list[str]] = {}
        for tenant in logs:
            alike.setdefault((limits[tenant].event_retention_bytes, limits[tenant].event_retention_seconds), []).append(tenant)
        trims: dict[str, int] = {}
        try:
            for (max_bytes, seconds), tenants in alike.items():
                for batch in self._retention_batches(tenants, logs):
                    heads = {tenant: logs[tenant].head for tenant in batch}
                    floors = await self.store.retention_floors(batch, max_bytes, now - seconds)
                    for tenant in batch:
                        floor = floors.get(tenant, heads[tenant] + 1)
                        log = logs[tenant]
                        if self.tenants.peek(tenant) is log and floor > log.floor:
                            log.floor = trims[tenant] = floor
                            while log.window and log.window[0].seq < floor:
                                log.window.popleft()
        finally:
            # a tenant forgotten meanwhile (purged, or imported anew) keeps what storage holds
            trims = {t: floor for t, floor in trims.items() if self.tenants.peek(t) is logs[t]}
            if trims:
                self.retention_trims += len(trims)
                await self.store.trim(trims)
        return len(trims)

    @staticmethod
    def _retention_batches(tenants: list[str], logs: dict[str, TenantLog]) -> Iterable[list[str]]:
        batch: list[str] = []
        rows = 0
        for tenant in tenants:
            stored = logs[tenant].head - logs[tenant].floor + 1
            if batch and (len(batch) >= RETENTION_BATCH or rows + stored > RETENTION_ROWS):
                yield batch
                batch, rows = [], 0
            batch.append(tenant)
            rows += stored
        if batch:
            yield batch

    def set_limits(self, tenant: str, overrides: dict[str, Any] | None) -> dict[str, Any]:
        return self.limits.put(tenant, overrides).to_dict()

    # -- reads ------------------------------------------------------------------------------------
    async def heads(self, tenants: list[str]) -> dict[str, int]:
        logs = await self.tenants.activate(tenants)
        return {t: log.head for t, log in logs.items()}

    async def read(
        self, tenant: str, after: int, *, flow_ids: list[str] | None = None, limit: int | None = None
    ) -> dict[str, Any]:
        """Events of one tenant with seq > after (optionally only some flows plus tenant-wide ones).

        `gap` is true when events after `after` were already trimmed: the caller cannot catch up
        exactly and is told the oldest seq still kept (`floor`).
        """
        limit = min(limit or self.options.read_limit, self.options.read_limit)
        log = (await self.tenants.activate([tenant]))[tenant]
        if after < log.floor - 1:
            return {"events": [], "head": log.head, "floor": log.floor, "gap": True}
        events = log.after(after, limit if flow_ids is None else self.options.window)
        if events is None:
            events = await self.store.read(tenant, after, limit=limit, flow_ids=flow_ids)
        elif flow_ids is not None:
            wanted = set(flow_ids)
            events = [e for e in events if e.flow_id is None or e.flow_id in wanted][:limit]
        return {"events": events, "head": log.head, "floor": log.floor, "gap": False}

    async def poll(self, cursors: dict[str, int], timeout: float, poll_id: str | None = None) -> dict[str, Any]:
        """Long-poll many tenants at once: returns as soon as any has events after its cursor.

        Returns {"events": {tenant: [Event]}, "heads": {tenant: head}, "floors": {tenant: floor}},
        heads and floors of the tenants with events.
        A cursor behind the in-memory window is served from storage, so a poller that fell behind
        (or a hub that just restarted) still delivers every event in order. With a `poll_id`,
        `join` can add tenants to this poll while it waits.
        """
        deadline = self.clock() + max(0.0, timeout)
        cursors = dict(cursors)
        if poll_id is not None:
            _, early = self._early_joins.pop(poll_id, (0.0, {}))
            for tenant, cursor in early.items():
                cursors.setdefault(tenant, cursor)  # the poll's own cursor is the newer one
            self._polls[poll_id] = cursors
        try:
            return await self._poll(cursors, deadline)
        finally:
            if poll_id is not None and self._polls.get(poll_id) is cursors:
                del self._polls[poll_id]

    def join(self, poll_id: str, cursors: dict[str, int]) -> bool:
        """Add tenants to a waiting poll. False when that poll is not waiting yet: the tenants are
        then kept for the next poll of that id, which may be the one still on its way here (the
        caller's next poll carries them anyway, so a join kept after its poll ended is harmless)."""
        waiting = self._polls.get(poll_id)
        if waiting is None:
            now = self.clock()
            self._early_joins = {
                p: (at, c) for p, (at, c) in self._early_joins.items() if now - at <= EARLY_JOIN_TTL
            }
            _, kept = self._early_joins.get(poll_id, (now, {}))
            for tenant, cursor in cursors.items():
                kept.setdefault(tenant, cursor)
            self._early_joins[poll_id] = (now, kept)
            return False
        for tenant, cursor in cursors.items():
            waiting.setdefault(tenant, cursor)
        self._announce(list(cursors))
        return True

    async def _poll(self, cursors: dict[str, int], deadline: float) -> dict[str, Any]:
        change = self._change
        due: Iterable[str] = list(cursors)  # the first look: every tenant of the poll
        while True:
            logs = await self._logs_of(due)
            found: dict[str, list[Event]] = {}
            for tenant, log in logs.items():
                cursor = cursors[tenant]
                if cursor >= log.head:
                    continue
                events = log.after(max(cursor, log.floor - 1), self.options.read_limit)
                if events is None:
                    events = await self.store.read(tenant, max(cursor, log.floor - 1), limit=self.options.read_limit)
                if events:
                    found[tenant] = events
            remaining = deadline - self.clock()
            if found or remaining <= 0:
                return {
                    "events": found,
                    "heads": {t: logs[t].head for t in found},
                    "floors": {t: logs[t].floor for t in found},
                }
            with contextlib.suppress(asyncio.TimeoutError):  # the timeout ends the poll at the loop's top
                await asyncio.wait_for(change.done.wait(), remaining)
            changed: set[str] = set()
            while change.done.is_set() and change.next is not None:  # every link passed since the last look
                changed.update(tenant for tenant in change.tenants if tenant in cursors)
                change = change.next
            due = changed

    async def _logs_of(self, tenants: Iterable[str]) -> dict[str, TenantLog]:
        """The logs of a poll's tenants: the active ones as they are, the others loaded. Looking is
        not a use that keeps a tenant in memory (a commit is): touching each of 1,000 tenants at
        each of ~100 polls a second was a sixth of the hub's time. A quiet tenant left memory
        after `idle_seconds` is loaded again at the next look."""
        logs: dict[str, TenantLog] = {}
        missing: list[str] = []
        for tenant in tenants:
            log = self.tenants.peek(tenant)
            if log is None:
                missing.append(tenant)
            else:
                logs[tenant] = log
        if missing:
            logs.update(await self.tenants.activate(missing))
        return logs

    # -- presence ---------------------------------------------------------------------------------
    def report_presence(self, replica: str, counts: dict[str, dict[str, int]]) -> None:
        """An ingress replica's current sockets: {tenant: {"*": connections, flow_id: subscribers}}."""
        self._presence[replica] = (self.clock(), counts)

    def presence(self, tenants: Iterable[str]) -> dict[str, dict[str, Any]]:
        now = self.clock()
        self._presence = {
            r: (at, c) for r, (at, c) in self._presence.items() if now - at <= self.options.presence_ttl
        }
        result: dict[str, dict[str, Any]] = {}
        for tenant in tenants:
            total, flows, replicas = 0, {}, 0
            for _, counts in self._presence.values():
                mine = counts.get(tenant)
                if not mine:
                    continue
                replicas += 1
                for key, n in mine.items():
                    if key == "*":
                        total += n
                    else:
                        flows[key] = flows.get(key, 0) + n
            result[tenant] = {"connections": total, "flows": flows, "replicas": replicas}
        return result

    def forget(self, tenant: str) -> bool:
        """Drop the tenant from this shard's memory (its data was purged, or imported): its next
        use loads what storage holds."""
        self.limits.forget(tenant)
        active = self.tenants.forget(tenant)
        self._announce([tenant])  # a waiting poll of the tenant looks again at what storage holds
        return active

    def stats(self) -> dict[str, Any]:
        return {
            "active_tenants": len(self.tenants),
            "appended": self.appended,
            "commits": self._commits.flushes, "isolated_commits": self._commits.isolations,
            "activations": self.tenants.activations,
            "evictions": self.tenants.evictions,
            "retention_trims": self.retention_trims,
            "replicas_reporting": len(self._presence),
        }


def wire_events(events: list[Event]) -> list[list[Any]]:
    return [event.to_wire() for event in events]


def unwire_events(wire: list[list[Any]]) -> list[Event]:
    return [Event.from_wire(item) for item in wire]
