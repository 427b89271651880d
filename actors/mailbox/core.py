"""Mailbox: durable per-agent message queues and topics for a tenant's agents.

Delivery is at least once. A message is stored before `send` answers; `receive` hands out ready
messages and stores them as in flight (attempts + 1, invisible until `visible_at`) before it
answers; `ack` stores them as acked. An in-flight message not acked within its visibility timeout
becomes ready again, at the front of its queue; one that was handed out `max_attempts` times
becomes dead instead (a dead letter, listed for inspection, never redelivered). Every message
handed to a queue also appears on the tenant's event stream as an `agent_message` event.

`MailboxCore` is the state logic (driven by tests without Ray); `Mailbox` is the Ray actor.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any, Awaitable, Callable

from actors.substrate.activation import ActivationTable
from actors.substrate.background import BackgroundPublisher
from actors.substrate.group_commit import GroupCommit, Pending
from actors.substrate.limits import Limits, LimitsCache
from actors.substrate.metrics import NO_METRICS, MetricSink
from actors.substrate.operations import ActorError
from storage.mailbox import MailboxStore, MailboxWrites

log = logging.getLogger("raytenant.mailbox")

KIND = "mailbox"
MESSAGE_TYPES = ("request", "response", "notification", "error")
EVENT_CONTENT_LIMIT = 2_048  # bytes of content copied into the agent_message event
Notify = Callable[[str, list[dict[str, Any]]], Awaitable[Any]]


class MailboxError(ActorError):
    """A refused mailbox operation (status, code, message, details)."""


@dataclass(frozen=True)
class MailboxOptions:
    visibility_timeout: float = 30.0
    max_attempts: int = 5
    sweep_interval: float = 0.5
    idle_seconds: float = 900.0
    max_tenants: int = 20_000
    max_wait: float = 30.0
    limits: Limits = Limits()  # the deployment's defaults: queued messages per agent and per tenant


@dataclass
class Message:
    id: str
    receiver: str
    sender: str
    type: str
    content: Any
    correlation_id: str | None
    topic: str | None
    created_at: float
    state: str = "ready"
    attempts: int = 0
    visible_at: float = 0.0
    updated_at: float = 0.0

    def row(self, tenant: str) -> dict[str, Any]:
        return {
            "id": self.id, "tenant": tenant, "receiver": self.receiver, "sender": self.sender, "type": self.type,
            "content": self.content, "correlation_id": self.correlation_id, "topic": self.topic, "state": self.state,
            "attempts": self.attempts, "visible_at": _dt(self.visible_at), "created_at": _dt(self.created_at),
            "updated_at": _dt(self.updated_at or self.created_at),
        }

    def state_row(self) -> dict[str, Any]:
        return {"id": self.id, "state": self.state, "attempts": self.attempts, "visible_at": _dt(self.visible_at),
                "updated_at": _dt(self.updated_at or self.created_at)}

    def view(self) -> dict[str, Any]:
        return {
            "message_id": self.id, "type": self.type, "sender": self.sender, "receiver": self.receiver,
            "content": self.content, "correlation_id": self.correlation_id, "topic": self.topic,
            "timestamp": _iso(self.created_at), "attempts": self.attempts,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Message":
        return cls(row["id"], row["receiver"], row["sender"], row["type"], row["content"], row["correlation_id"],
                   row["topic"], _ts(row["created_at"]), row["state"], row["attempts"], _ts(row["visible_at"]),
                   _ts(row["updated_at"]))


@lru_cache(maxsize=4096)
def _dt(ts: float) -> datetime:
    """Cached: a batch's rows share their `now`, and a message is written and shown several times."""
    return datetime.fromtimestamp(ts, timezone.utc)


@lru_cache(maxsize=4096)
def _iso(ts: float) -> str:
    return _dt(ts).isoformat()


def _ts(value: datetime) -> float:
    return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()


class Messages(dict[str, Message]):
    """A tenant's ready and in-flight messages by id, counted by receiver as they come and go, so
    the queue quotas are checked without walking a deep queue at every send. Only `[]=`, `del`,
    `get` and iteration are used on it."""

    def __init__(self) -> None:
        super().__init__()
        self.per_receiver: Counter[str] = Counter()

    def __setitem__(self, message_id: str, message: Message) -> None:
        previous = self.get(message_id)
        if previous is not None:
            self._uncount(previous.receiver)
        super().__setitem__(message_id, message)
        self.per_receiver[message.receiver] += 1

    def __delitem__(self, message_id: str) -> None:
        self._uncount(self[message_id].receiver)
        super().__delitem__(message_id)

    def _uncount(self, receiver: str) -> None:
        self.per_receiver[receiver] -= 1
        if not self.per_receiver[receiver]:
            del self.per_receiver[receiver]


@dataclass
class TenantMailbox:
    queues: dict[str, deque[Message]] = field(default_factory=dict)
    messages: Messages = field(default_factory=Messages)  # ready and in flight, by id
    topics: dict[str, set[str]] = field(default_factory=dict)  # topic -> agents
    agent_topics: dict[str, list[str]] = field(default_factory=dict)
    waiters: dict[str, list[asyncio.Future]] = field(default_factory=dict)
    requests: dict[str, tuple[str, asyncio.Future]] = field(default_factory=dict)  # correlation id -> (sender, answer)
    # No in-flight message becomes visible before this (a lower bound: acks never raise it), so a
    # receive checks for expired messages in O(1) and scans only when one may be due.
    next_due: float = float("inf")
    sending: Counter = field(default_factory=Counter)  # messages of sends not yet committed, by receiver

    def queue(self, agent: str) -> deque[Message]:
        return self.queues.setdefault(agent, deque())

    def wake(self, agent: str) -> None:
        for future in self.waiters.pop(agent, []):
            if not future.done():
                future.set_result(None)


class MailboxCore:
    def __init__(self, store: MailboxStore, options: MailboxOptions = MailboxOptions(), *,
                 notify: Notify | None = None, clock: Callable[[], float] = time.time,
                 metrics: MetricSink = NO_METRICS, limits: LimitsCache | None = None) -> None:
        self.store, self.options, self.notify, self.clock, self.metrics = store, options, notify, clock, metrics
        self.limits = limits or LimitsCache(None, options.limits)
        # Two commits in flight on PostgreSQL (SQLite has one writer at a time anyway).
        self._commits: GroupCommit[MailboxWrites] = GroupCommit(
            self._write, MailboxError, rows=MailboxWrites.rows if store.dialect == "postgresql" else None)
        self.tenants: ActivationTable[TenantMailbox] = ActivationTable(
            self._load, idle_seconds=options.idle_seconds, max_tenants=options.max_tenants, busy=self._busy
        )
        self._events = BackgroundPublisher(notify, "agent_message events")
        self._last_stamp = 0.0
        self.counters = {"sent": 0, "delivered": 0, "acked": 0, "redelivered": 0, "dead": 0}

    def _stamp(self, now: float) -> float:
        """Strictly increasing creation times (microsecond steps): queue order survives a reload."""
        self._last_stamp = max(now, self._last_stamp + 1e-6)
        return self._last_stamp

    def _busy(self, tenant: str) -> bool:
        state = self.tenants.peek(tenant)
        return tenant in self._commits.in_flight or bool(state and (state.waiters or state.requests))

    async def _load(self, tenants: list[str]) -> dict[str, TenantMailbox]:
        states = {}
        for tenant in tenants:
            state = TenantMailbox()
            rows, subscriptions = await self.store.load(tenant)
            for row in rows:
                message = Message.from_row(row)
                state.messages[message.id] = message
                if message.state == "ready":
                    state.queue(message.receiver).append(message)
                else:
                    state.next_due = min(state.next_due, message.visible_at)
            for row in subscriptions:
                state.topics.setdefault(row["topic"], set()).add(row["agent"])
                state.agent_topics.setdefault(row["agent"], []).append(row["topic"])
            states[tenant] = state
        return states

    async def _state(self, tenant: str) -> TenantMailbox:
        return (await self.tenants.activate([tenant]))[tenant]

    async def _write(self, pending: list[Pending[MailboxWrites]]) -> None:
        merged = MailboxWrites()
        for item in pending:
            merged.merge(item.writes)
        await self.store.write(merged)

    def _rows(self, tenant: str, messages: list[Message]) -> MailboxWrites:
        """New messages, stored whole."""
        return MailboxWrites(messages={m.id: m.row(tenant) for m in messages})

    @staticmethod
    def _states(messages: list[Message]) -> MailboxWrites:
        """Stored messages' new delivery state (their content is not written again)."""
        return MailboxWrites(states={m.id: m.state_row() for m in messages})

    # -- sending ----------------------------------------------------------------------------------
    async def send(self, tenant: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Store messages and queue them for their receivers. Each item: receiver, sender, type,
        content, correlation_id?, topic?."""
        limits = await self.limits.of(tenant)
        state = await self._state(tenant)
        now = self.clock()
        messages = [
            Message(uuid.uuid4().hex, item["receiver"], item["sender"], item.get("type", "notification"),
                    item.get("content"), item.get("correlation_id"), item.get("topic"), self._stamp(now),
                    visible_at=now, updated_at=now)
            for item in items
        ]
        wanted = Counter(m.receiver for m in messages)
        self._admit(state, limits, wanted)
        state.sending.update(wanted)  # counted until stored, so concurrent sends cannot overfill
        try:
            await self._commits.commit(tenant, self._rows(tenant, messages), lambda: None)
        finally:
            state.sending.subtract(wanted)
            state.sending = +state.sending
        for message in messages:  # stored: now visible to receivers
            state.messages[message.id] = message
            waiting = state.requests.get(message.correlation_id or "")
            if message.type in ("response", "error") and waiting and waiting[0] == message.receiver:
                message.state = "inflight"  # taken by the request helper, which acks it
                message.visible_at = now + self.options.visibility_timeout
                state.next_due = min(state.next_due, message.visible_at)
                if not waiting[1].done():
                    waiting[1].set_result(message)
                continue
            state.queue(message.receiver).append(message)
            state.wake(message.receiver)
        self.counters["sent"] += len(messages)
        self._publish(tenant, messages)
        return [m.view() for m in messages]

    def _admit(self, state: TenantMailbox, limits: Limits, wanted: Counter) -> None:
        """Refuse a send that would hold more than the tenant's queue quotas (ready, in flight
        and being stored count; dead letters do not)."""
        queued = state.messages.per_receiver + state.sending
        total, adding = len(state.messages) + sum(state.sending.values()), sum(wanted.values())
        if total + adding > limits.queued_messages:
            self.metrics.inc("raytenant_limit_refusals", limit="queued_messages")
            raise MailboxError(429, "quota_exceeded", f"the tenant holds {total} queued messages of "
                               f"{limits.queued_messages}; receive and ack some first", limit="queued_messages",
                               queued=total, retry_after=1)
        for agent, n in wanted.items():
            if queued[agent] + n > limits.queued_messages_per_agent:
                self.metrics.inc("raytenant_limit_refusals", limit="queued_messages_per_agent")
                raise MailboxError(429, "quota_exceeded", f"agent {agent!r} holds {queued[agent]} queued messages of "
                                   f"{limits.queued_messages_per_agent}", limit="queued_messages_per_agent",
                                   agent=agent, queued=queued[agent], retry_after=1)

    async def set_limits(self, tenant: str, overrides: dict[str, Any] | None) -> dict[str, Any]:
        return self.limits.put(tenant, overrides).to_dict()

    async def broadcast(self, tenant: str, sender: str, topic: str, type_: str, content: Any) -> dict[str, Any]:
        """One message per subscriber of `topic`, except the sender. Returns the recipient count."""
        state = await self._state(tenant)
        recipients = sorted(state.topics.get(topic, set()) - {sender})
        sent = await self.send(tenant, [{"receiver": r, "sender": sender, "type": type_, "content": content,
                                         "topic": topic} for r in recipients]) if recipients else []
        return {"topic": topic, "recipients": len(recipients), "message_ids": [m["message_id"] for m in sent]}

    def _publish(self, tenant: str, messages: list[Message]) -> None:
        if self.notify is None or not messages:
            return
        events = []
        for m in messages:
            data = {k: v for k, v in m.view().items() if k not in ("content", "attempts")}
            body = json.dumps(m.content, default=str)
            if len(body) <= EVENT_CONTENT_LIMIT:
                data["content"] = m.content
            events.append(data)
        self._events.send(tenant, events)

    # -- receiving --------------------------------------------------------------------------------
    async def receive(self, tenant: str, agent: str, max_messages: int = 10, wait: float = 0.0,
                      visibility: float | None = None) -> list[dict[str, Any]]:
        """Up to `max_messages` ready messages of `agent`, waiting up to `wait` seconds for one."""
        deadline = self.clock() + min(wait, self.options.max_wait)
        while True:
            state = await self._state(tenant)  # re-read each turn: the tenant may have been reloaded
            await self._expire(tenant, state)
            queue = state.queue(agent)
            if queue:
                taken = [queue.popleft() for _ in range(min(max_messages, len(queue)))]
                return await self._hand_out(tenant, state, agent, taken, visibility)
            remaining = deadline - self.clock()
            if remaining <= 0:
                return []
            future = asyncio.get_running_loop().create_future()
            state.waiters.setdefault(agent, []).append(future)
            try:
                with contextlib.suppress(asyncio.TimeoutError):  # the loop's top sees the deadline passed
                    await asyncio.wait_for(asyncio.shield(future), remaining)
            finally:
                waiters = state.waiters.get(agent, [])
                if future in waiters:
                    waiters.remove(future)
                if not waiters:
                    state.waiters.pop(agent, None)

    async def _hand_out(self, tenant: str, state: TenantMailbox, agent: str, taken: list[Message],
                        visibility: float | None) -> list[dict[str, Any]]:
        now = self.clock()
        before = [(m.state, m.attempts, m.visible_at, m.updated_at) for m in taken]
        for m in taken:
            m.state, m.attempts, m.updated_at = "inflight", m.attempts + 1, now
            m.visible_at = now + (visibility or self.options.visibility_timeout)
            state.next_due = min(state.next_due, m.visible_at)

        def undo() -> None:
            for m, (st, attempts, visible_at, updated_at) in zip(taken, before):
                m.state, m.attempts, m.visible_at, m.updated_at = st, attempts, visible_at, updated_at
            state.queue(agent).extendleft(reversed(taken))

        await self._commits.commit(tenant, self._states(taken), undo)
        self.counters["delivered"] += len(taken)
        return [m.view() for m in taken]

    async def ack(self, tenant: str, agent: str, message_id: str) -> dict[str, Any]:
        result = await self.ack_many(tenant, agent, [message_id])
        if result["dead"]:
            raise MailboxError(409, "message_dead", "the message was dead-lettered after too many attempts")
        if result["not_found"]:
            raise MailboxError(404, "message_not_found", "no unacknowledged message with this id for this agent")
        return {"message_id": message_id, "state": "acked"}

    async def ack_many(self, tenant: str, agent: str, message_ids: list[str]) -> dict[str, list[str]]:
        """Acknowledge messages of `agent` in one commit. Acking twice is harmless; a message acked
        after its visibility ran out is taken off the queue (the work was done anyway)."""
        state = await self._state(tenant)
        now = self.clock()
        found, missing = [], []
        for message_id in dict.fromkeys(message_ids):
            message = state.messages.get(message_id)
            if message is not None and message.receiver == agent:
                found.append(message)
            else:
                missing.append(message_id)
        queue = state.queue(agent)
        before = [(m.state, m.updated_at) for m in found]
        requeue = [m for m in found if m.state == "ready"]
        for m in requeue:
            queue.remove(m)
        for m in found:
            m.state, m.updated_at = "acked", now
            del state.messages[m.id]

        def undo() -> None:
            for m, (st, updated_at) in zip(found, before):
                m.state, m.updated_at = st, updated_at
                state.messages[m.id] = m
            queue.extendleft(reversed(requeue))
            state.next_due = min([state.next_due, *(m.visible_at for m in found if m.state == "inflight")])

        if found:
            await self._commits.commit(tenant, self._states(found), undo)
            self.counters["acked"] += len(found)
        result: dict[str, list[str]] = {"acked": [m.id for m in found], "not_found": [], "dead": []}
        stored = await self.store.states(tenant, missing)  # one query, however many ids
        for message_id in missing:
            receiver, row_state = stored.get(message_id, (None, None))
            known = receiver == agent
            key = "acked" if known and row_state == "acked" else "dead" if known and row_state == "dead" else "not_found"
            result[key].append(message_id)
        return result

    async def _expire(self, tenant: str, state: TenantMailbox) -> None:
        """In-flight messages past their visibility: ready again (front of queue) or dead."""
        now = self.clock()
        if now < state.next_due:
            return
        inflight = [m for m in state.messages.values() if m.state == "inflight"]
        due = [m for m in inflight if m.visible_at <= now]
        state.next_due = min((m.visible_at for m in inflight if m.visible_at > now), default=float("inf"))
        if not due:
            return
        due.sort(key=lambda m: m.created_at)
        before = [(m.state, m.updated_at) for m in due]
        dead = [m for m in due if m.attempts >= self.options.max_attempts]
        again = [m for m in due if m.attempts < self.options.max_attempts]
        for m in dead:
            m.state, m.updated_at = "dead", now
            del state.messages[m.id]
        for m in again:
            m.state, m.updated_at = "ready", now
        for agent in {m.receiver for m in again}:
            state.queue(agent).extendleft(reversed([m for m in again if m.receiver == agent]))

        def undo() -> None:
            for m, (st, updated_at) in zip(due, before):
                m.state, m.updated_at = st, updated_at
                state.messages[m.id] = m
                if m in again and m in state.queue(m.receiver):
                    state.queue(m.receiver).remove(m)
            state.next_due = min([state.next_due, *(m.visible_at for m in due)])

        await self._commits.commit(tenant, self._states(due), undo)
        self.counters["redelivered"] += len(again)
        self.counters["dead"] += len(dead)
        self.metrics.inc("raytenant_mailbox_redeliveries", len(again))
        self.metrics.inc("raytenant_mailbox_dead_letters", len(dead))
        for agent in {m.receiver for m in again}:
            state.wake(agent)

    async def sweep(self) -> None:
        for tenant in self.tenants.names():
            state = self.tenants.peek(tenant)
            if state is not None:
                try:
                    await self._expire(tenant, state)
                except MailboxError:
                    log.warning("could not expire messages of %s; will retry", tenant)
        depth = 0
        for tenant in self.tenants.names():
            state = self.tenants.peek(tenant)
            depth += len(state.messages) if state is not None else 0
        self.metrics.set("raytenant_mailbox_depth", depth)

    # -- topics, requests, inspection -------------------------------------------------------------
    async def set_topics(self, tenant: str, agent: str, topics: list[str]) -> dict[str, Any]:
        state = await self._state(tenant)
        before = list(state.agent_topics.get(agent, []))
        wanted = sorted(set(topics))

        def apply(new: list[str]) -> None:
            for topic in state.agent_topics.get(agent, []):
                state.topics.get(topic, set()).discard(agent)
            state.agent_topics[agent] = new
            for topic in new:
                state.topics.setdefault(topic, set()).add(agent)

        apply(wanted)
        await self._commits.commit(tenant, MailboxWrites(topics={(tenant, agent): wanted}), lambda: apply(before))
        return {"agent": agent, "topics": wanted}

    async def get_topics(self, tenant: str, agent: str) -> dict[str, Any]:
        state = await self._state(tenant)
        return {"agent": agent, "topics": list(state.agent_topics.get(agent, []))}

    async def request(self, tenant: str, sender: str, receiver: str, content: Any, timeout: float) -> dict[str, Any]:
        """Send a request and wait for the response (a `response` or `error` message to `sender`
        with the request's correlation id). The response is acked on the caller's behalf."""
        state = await self._state(tenant)
        correlation = uuid.uuid4().hex
        answer = asyncio.get_running_loop().create_future()
        state.requests[correlation] = (sender, answer)
        try:
            [sent] = await self.send(tenant, [{"receiver": receiver, "sender": sender, "type": "request",
                                               "content": content, "correlation_id": correlation}])
            try:
                message = await asyncio.wait_for(answer, min(timeout, self.options.max_wait))
            except asyncio.TimeoutError:
                raise MailboxError(504, "request_timeout", f"no response from {receiver} within {timeout} s",
                                   request_id=sent["message_id"], correlation_id=correlation) from None
        finally:
            state.requests.pop(correlation, None)
        await self.ack(tenant, sender, message.id)
        return {"request_id": sent["message_id"], "response": message.view()}

    async def dead_letters(self, tenant: str, agent: str, limit: int = 100) -> list[dict[str, Any]]:
        return [Message.from_row(r).view() for r in await self.store.dead_letters(tenant, agent, limit)]

    async def depth(self, tenant: str, agent: str) -> dict[str, Any]:
        state = await self._state(tenant)
        inflight = sum(1 for m in state.messages.values() if m.receiver == agent and m.state == "inflight")
        return {"agent": agent, "ready": len(state.queue(agent)), "inflight": inflight}

    async def forget(self, tenant: str) -> bool:
        """Drop the tenant from this shard's memory (its data was purged, or imported): its next
        use loads what storage holds."""
        self.limits.forget(tenant)
        return self.tenants.forget(tenant)

    def stats(self) -> dict[str, Any]:
        return {"active_tenants": len(self.tenants), "commits": self._commits.flushes, "isolated_commits": self._commits.isolations, **self.counters}
