"""Per-replica stream delivery: sockets, subscriptions, hub polling, resume and back-pressure.

Each ingress replica keeps its own sockets. For every hub shard that owns at least one of its
tenants it runs one long poll carrying a cursor per tenant, then fans events out locally by
subscription. A tenant's events reach only that tenant's connections: feeds are keyed by the
tenant from the token, and flow ids are only ever compared within one tenant's feed.

Every outgoing message goes through the connection's bounded queue and one writer task, so
messages leave in order; a consumer that lets the queue fill is closed with 4008 and may resume.
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from actors.substrate.metrics import NO_METRICS, MetricSink
from actors.substrate.operations import ActorError
from storage.events import Event

log = logging.getLogger("raytenant.streams")

ALL_FLOWS = "*"
CLOSE_SLOW_CONSUMER = 4008
CLOSE_UNAUTHORIZED = 4001  # no valid token, or its token was revoked while the socket was open
CLOSE_SUSPENDED = 4003  # the tenant is suspended (at open, or while the socket was open)
Sender = Callable[[str], Awaitable[None]]
Closer = Callable[[int, str], Awaitable[None]]


@dataclass(eq=False)
class Connection:
    """One socket's delivery state. `last_sent` is the highest tenant seq handed to the writer."""

    tenant: str
    user: str | None
    send: Sender
    close: Closer
    queue_size: int = 1_000
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    flows: set[str] = field(default_factory=set)
    last_sent: int = 0
    joined_at: int = 0
    resuming: bool = False
    held: list[Event] = field(default_factory=list)
    closed: bool = False
    max_subscriptions: int | None = None  # the tenant's subscriptions_per_socket (None: unbounded)
    iat: float = 0.0  # the token it opened with: a revocation of that token closes it, and so do
    jti: str | None = None  # the token's expiry and the retirement of the key that signed it
    exp: float = math.inf
    kid: str | None = None

    def __post_init__(self) -> None:
        self.queue: asyncio.Queue[str] = asyncio.Queue(self.queue_size)
        self.writer: asyncio.Task | None = None

    def wants(self, event: Event) -> bool:
        return event.flow_id is None or ALL_FLOWS in self.flows or event.flow_id in self.flows

    def flow_filter(self) -> list[str] | None:
        return None if ALL_FLOWS in self.flows else sorted(self.flows)

    def offer(self, text: str) -> bool:
        """Queue a message for the writer. False (and the socket is closing) when the queue is full."""
        if self.closed:
            return False
        try:
            self.queue.put_nowait(text)
            return True
        except asyncio.QueueFull:
            self.shut(CLOSE_SLOW_CONSUMER, "slow consumer: reconnect and resume from your last seq")
            return False

    def send_json(self, message: dict[str, Any]) -> bool:
        return self.offer(json.dumps(message, separators=(",", ":")))

    def deliver(self, event: Event, text: str) -> None:
        if event.seq <= self.last_sent or not self.wants(event):
            return
        if self.resuming:
            self.held.append(event)
            if len(self.held) > self.queue_size:
                self.shut(CLOSE_SLOW_CONSUMER, "slow consumer: reconnect and resume from your last seq")
            return
        if self.offer(text):
            self.last_sent = event.seq

    async def push(self, message: dict[str, Any]) -> bool:
        """Queue a message, waiting for room: replay is paced by the client, not dropped."""
        if self.closed:
            return False
        await self.queue.put(json.dumps(message, separators=(",", ":")))
        return not self.closed

    def start_writer(self) -> None:
        self.writer = asyncio.create_task(self._write())

    async def _write(self) -> None:
        try:
            while True:
                await self.send(await self.queue.get())
        except asyncio.CancelledError:
            raise
        except Exception:  # the socket went away; the reader side cleans up
            self.closed = True

    def shut(self, code: int, reason: str) -> None:
        """Close from anywhere (the delivery path must not wait on a slow socket)."""
        if self.closed:
            return
        self.closed = True
        if self.writer:
            self.writer.cancel()
        asyncio.create_task(self.close(code, reason))


@dataclass(eq=False)
class TenantFeed:
    tenant: str
    shard: int
    cursor: int
    connections: set[Connection] = field(default_factory=set)


class StreamRouter:
    """The replica's sockets and the hub polls that feed them. `hub` is an EventHubClient."""

    def __init__(
        self,
        hub: Any,
        replica_id: str,
        *,
        poll_timeout: float = 10.0,
        poll_interval: float = 0.01,
        presence_interval: float = 2.0,
        metrics: MetricSink = NO_METRICS,
    ):
        self.hub = hub
        self.metrics = metrics
        self.replica_id = replica_id
        self.poll_timeout = poll_timeout
        self.poll_interval = poll_interval
        self.presence_interval = presence_interval
        self.feeds: dict[str, TenantFeed] = {}
        self.connections: dict[str, Connection] = {}
        self._pollers: dict[int, asyncio.Task] = {}
        self._presence_task: asyncio.Task | None = None
        self._feed_locks: dict[str, asyncio.Lock] = {}
        self.delivered = 0
        self.slow_closed = 0

    # -- connections ------------------------------------------------------------------------------
    async def connect(self, conn: Connection) -> int:
        """Register a connection; returns the tenant's head seq, from which live delivery starts."""
        feed = await self._feed(conn.tenant)
        conn.last_sent = conn.joined_at = feed.cursor
        feed.connections.add(conn)
        self.connections[conn.id] = conn
        self.metrics.set("raytenant_ws_connections", len(self.connections))
        self._ensure_presence()
        return feed.cursor

    def disconnect(self, conn: Connection) -> None:
        conn.closed = True
        if conn.writer:
            conn.writer.cancel()
        self.connections.pop(conn.id, None)
        self.metrics.set("raytenant_ws_connections", len(self.connections))
        feed = self.feeds.get(conn.tenant)
        if feed:
            feed.connections.discard(conn)
            if not feed.connections:
                del self.feeds[conn.tenant]

    def close_revoked(self, tenants: set[str], revoked: Callable[[str, float, str | None], bool],
                      suspended: Callable[[str], bool] = lambda tenant: False) -> int:
        """Close the sockets of `tenants` whose token is now revoked, or every socket of a tenant
        now suspended; returns how many."""
        closed = 0
        for tenant in tenants:
            feed = self.feeds.get(tenant)
            stop = suspended(tenant)
            for conn in list(feed.connections) if feed else ():
                if stop:
                    conn.shut(CLOSE_SUSPENDED, "the tenant is suspended")
                    closed += 1
                elif revoked(tenant, conn.iat, conn.jti):
                    conn.shut(CLOSE_UNAUTHORIZED, "the token was revoked")
                    closed += 1
        return closed

    def close_lapsed(self, reason_to_close: Callable[[Connection], str | None]) -> int:
        """Close every socket whose token no longer holds (`reason_to_close` says why, or None)."""
        closed = 0
        for conn in list(self.connections.values()):
            reason = reason_to_close(conn)
            if reason is not None:
                conn.shut(CLOSE_UNAUTHORIZED, reason)
                closed += 1
        return closed

    async def _feed(self, tenant: str) -> TenantFeed:
        feed = self.feeds.get(tenant)
        if feed:
            return feed
        lock = self._feed_locks.setdefault(tenant, asyncio.Lock())
        async with lock:
            feed = self.feeds.get(tenant)
            if feed is None:
                head = await self.hub.head(tenant)
                feed = self.feeds[tenant] = TenantFeed(tenant, self.hub.shard_of(tenant), head)
                self._watch(feed)
        self._feed_locks.pop(tenant, None)
        return feed

    def _watch(self, feed: TenantFeed) -> None:
        poller = self._pollers.get(feed.shard)
        if poller is None or poller.done():
            self._pollers[feed.shard] = asyncio.create_task(self._poll_shard(feed.shard))
        else:  # add the tenant to the poll already waiting on that shard
            asyncio.create_task(self.hub.join(feed.shard, self._poll_id(feed.shard), {feed.tenant: feed.cursor}))

    def _poll_id(self, shard: int) -> str:
        return f"{self.replica_id}:{shard}"

    # -- polling and fan-out ----------------------------------------------------------------------
    async def _poll_shard(self, shard: int) -> None:
        while True:
            cursors = {t: f.cursor for t, f in self.feeds.items() if f.shard == shard}
            if not cursors:
                self._pollers.pop(shard, None)
                return
            started = time.monotonic()
            try:
                result = await self.hub.poll(shard, cursors, self.poll_timeout, self._poll_id(shard))
            except asyncio.CancelledError:
                raise
            except ActorError as error:  # the database away while the shard reads behind its window
                log.warning("poll of hub shard %s refused (%s); retrying", shard, error.code)
                await asyncio.sleep(0.5)
                continue
            except Exception:
                log.exception("poll of hub shard %s failed; retrying", shard)
                await asyncio.sleep(0.5)
                continue
            for tenant, events in result["events"].items():
                self.dispatch(tenant, events)
            # Pace the polls: under load every commit would otherwise cost a poll round trip per
            # shard. Events this replica publishes go out at once (dispatch_local); events from
            # other writers wait at most poll_interval longer.
            pause = self.poll_interval - (time.monotonic() - started)
            if pause > 0:
                await asyncio.sleep(pause)

    def dispatch_local(self, tenant: str, events: list[Event]) -> None:
        """Deliver events this replica just appended without waiting for the hub poll to echo them.

        Only when they directly follow what the feed has delivered: otherwise another writer's
        events come first, and the poll delivers everything in order (the echo is deduplicated).
        """
        feed = self.feeds.get(tenant)
        if feed and events and events[0].seq == feed.cursor + 1:
            self.dispatch(tenant, events)

    def dispatch(self, tenant: str, events: list[Event]) -> None:
        """Fan one tenant's events out to its connections on this replica, in seq order."""
        feed = self.feeds.get(tenant)
        if feed is None:
            return
        delivered = slow = 0
        for event in events:
            if event.seq <= feed.cursor:
                continue
            feed.cursor = event.seq
            text = json.dumps(event.to_message(), separators=(",", ":"))
            for conn in list(feed.connections):
                before = conn.closed
                conn.deliver(event, text)
                if conn.closed and not before:
                    slow += 1
            delivered += len(feed.connections)
        self.delivered += delivered
        self.slow_closed += slow
        self.metrics.inc("raytenant_events_delivered", delivered)
        self.metrics.inc("raytenant_slow_consumer_disconnects", slow)

    # -- resume -----------------------------------------------------------------------------------
    async def resume(self, conn: Connection, last_seq: int) -> None:
        """Send every event after `last_seq` that this connection has not yet been sent, in order,
        then continue live. Live events that arrive meanwhile are held and released after.

        Everything up to the head at connect time is replayed from the hub; events after that were
        (or will be) delivered live, so nothing is sent twice.
        """
        until = conn.joined_at
        conn.resuming = True
        try:
            after = last_seq
            replayed = 0
            while after < until and not conn.closed:
                page = await self.hub.read(conn.tenant, after, flow_ids=conn.flow_filter())
                if page["gap"]:
                    await conn.push(
                        {"type": "resume_failed", "last_seq": last_seq, "oldest_seq": page["floor"], "head": page["head"],
                         "message": "events after last_seq are no longer kept; reload state and continue live"}
                    )
                    return
                events = [e for e in page["events"] if e.seq <= until]
                for event in events:
                    if conn.wants(event) and await conn.push(event.to_message()):
                        replayed += 1
                if len(events) < len(page["events"]) or not page["events"]:
                    break
                after = page["events"][-1].seq
            await conn.push({"type": "resume_completed", "last_seq": last_seq, "replayed": replayed, "head": until})
        finally:
            # Release what arrived live meanwhile; anything arriving during this is held too, so
            # order holds until the hand-over to live delivery.
            while conn.held and not conn.closed:
                held, conn.held = conn.held, []
                for event in held:
                    if event.seq > conn.last_sent and conn.wants(event) and await conn.push(event.to_message()):
                        conn.last_sent = event.seq
            conn.resuming = False

    # -- presence ---------------------------------------------------------------------------------
    def presence_counts(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for tenant, feed in self.feeds.items():
            tenant_counts = counts[tenant] = {ALL_FLOWS: len(feed.connections)}
            for conn in feed.connections:
                for flow in conn.flows:
                    if flow != ALL_FLOWS:
                        tenant_counts[flow] = tenant_counts.get(flow, 0) + 1
        return counts

    def _ensure_presence(self) -> None:
        if self._presence_task is None or self._presence_task.done():
            self._presence_task = asyncio.create_task(self._report_presence())

    async def _report_presence(self) -> None:
        while True:
            try:
                await self.hub.report_presence(self.replica_id, self.presence_counts())
            except Exception:
                log.exception("presence report failed")
            if not self.feeds:  # the last report above said "none left"; stop until a new socket
                self._presence_task = None
                return
            await asyncio.sleep(self.presence_interval)

    async def report_now(self) -> None:
        await self.hub.report_presence(self.replica_id, self.presence_counts())

    async def stop(self) -> None:
        for task in [*self._pollers.values(), self._presence_task]:
            if task:
                task.cancel()
        for conn in list(self.connections.values()):
            conn.shut(1001, "server shutting down")
