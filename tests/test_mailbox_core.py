"""Mailbox state logic on the real databases, without Ray: at-least-once delivery, redelivery,
dead letters, topics, request/response, restarts and failed commits."""
from __future__ import annotations

import asyncio

import pytest

from actors.mailbox.core import MailboxCore, MailboxError, MailboxOptions, Message, Messages
from storage.engine import create_engine
from storage.mailbox import MailboxStore, MailboxWrites


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def engine(db_url):
    found = create_engine(db_url)
    yield found
    await found.dispose()


def mailbox(engine, clock=None, events=None, **options) -> MailboxCore:
    async def notify(tenant, batch):
        events.append((tenant, batch))

    return MailboxCore(MailboxStore(engine), MailboxOptions(**options), clock=clock or Clock(),
                       notify=notify if events is not None else None)


def msg(receiver="mapper", sender="validator", **extra):
    return {"receiver": receiver, "sender": sender, "type": "notification", "content": {"n": 1}, **extra}


async def test_any_json_content_is_stored_and_read_back(engine, tenant):
    """Content is any JSON value, null included (the column stores JSON null, not SQL NULL); it
    survives a reload from storage."""
    contents = [None, 0, "", [], {}, False, "text", [1, {"a": None}]]
    box = mailbox(engine)
    await box.send(tenant, [msg(content=c) for c in contents])
    got = await box.receive(tenant, "mapper", 3)
    assert [m["content"] for m in got] == contents[:3]
    reloaded = mailbox(engine)
    assert [m["content"] for m in await reloaded.receive(tenant, "mapper", 10)] == contents[3:]


async def test_send_receive_ack_in_order(engine, tenant):
    events: list = []
    box = mailbox(engine, events=events)
    sent = await box.send(tenant, [msg(content={"n": i}) for i in range(5)])
    assert [m["content"]["n"] for m in sent] == [0, 1, 2, 3, 4] and sent[0]["attempts"] == 0
    first = await box.receive(tenant, "mapper", 3)
    assert [m["content"]["n"] for m in first] == [0, 1, 2] and all(m["attempts"] == 1 for m in first)
    assert (await box.depth(tenant, "mapper")) == {"agent": "mapper", "ready": 2, "inflight": 3}
    for m in first:
        assert await box.ack(tenant, "mapper", m["message_id"]) == {"message_id": m["message_id"], "state": "acked"}
    assert await box.ack(tenant, "mapper", first[0]["message_id"]) == {"message_id": first[0]["message_id"],
                                                                         "state": "acked"}
    rest = await box.receive(tenant, "mapper", 10)
    assert [m["content"]["n"] for m in rest] == [3, 4]
    assert await box.receive(tenant, "mapper", 10) == []
    assert await box.receive(tenant, "nobody", 10) == []
    with pytest.raises(MailboxError) as missing:
        await box.ack(tenant, "someone-else", rest[0]["message_id"])
    assert missing.value.status == 404
    await asyncio.sleep(0.05)
    assert [e["receiver"] for _, batch in events for e in batch] == ["mapper"] * 5
    assert events[0][1][0]["content"] == {"n": 0} and events[0][0] == tenant


async def test_redelivery_after_visibility_then_dead_letter(engine, tenant):
    clock = Clock()
    box = mailbox(engine, clock, max_attempts=3, visibility_timeout=10)
    [sent] = await box.send(tenant, [msg()])
    for attempt in (1, 2, 3):
        [got] = await box.receive(tenant, "mapper", 1)
        assert got["message_id"] == sent["message_id"] and got["attempts"] == attempt
        assert await box.receive(tenant, "mapper", 1) == []  # invisible while in flight
        clock.now += 11
    assert await box.receive(tenant, "mapper", 1) == []  # three attempts: dead, not redelivered
    [dead] = await box.dead_letters(tenant, "mapper")
    assert dead["message_id"] == sent["message_id"] and dead["attempts"] == 3
    with pytest.raises(MailboxError) as gone:
        await box.ack(tenant, "mapper", sent["message_id"])
    assert gone.value.status == 409 and gone.value.code == "message_dead"
    assert box.stats()["redelivered"] == 2 and box.stats()["dead"] == 1


async def test_late_ack_after_redelivery_is_accepted(engine, tenant):
    clock = Clock()
    box = mailbox(engine, clock, visibility_timeout=5)
    [sent] = await box.send(tenant, [msg()])
    await box.receive(tenant, "mapper", 1)
    clock.now += 6
    await box.sweep()
    assert (await box.depth(tenant, "mapper"))["ready"] == 1
    await box.ack(tenant, "mapper", sent["message_id"])  # the work was done; the redelivery is dropped
    assert await box.receive(tenant, "mapper", 1) == []


async def test_long_poll_wakes_on_send(engine, tenant):
    box = mailbox(engine, clock=__import__("time").time)
    waiting = asyncio.create_task(box.receive(tenant, "mapper", 5, wait=5))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await box.send(tenant, [msg()])
    got = await asyncio.wait_for(waiting, 2)
    assert len(got) == 1
    began = asyncio.get_running_loop().time()
    assert await box.receive(tenant, "mapper", 5, wait=0.2) == []
    assert asyncio.get_running_loop().time() - began >= 0.19


async def test_topics_and_broadcast(engine, tenant):
    box = mailbox(engine)
    for agent in ("mapper", "risk", "planner"):
        await box.set_topics(tenant, agent, ["schema-changes", "alerts"] if agent != "planner" else ["alerts"])
    await box.set_topics(tenant, "risk", ["alerts"])  # replaces the list
    assert await box.get_topics(tenant, "risk") == {"agent": "risk", "topics": ["alerts"]}
    result = await box.broadcast(tenant, "mapper", "alerts", "notification", {"x": 1})
    assert result["recipients"] == 2 and len(result["message_ids"]) == 2  # not to the sender
    assert (await box.broadcast(tenant, "mapper", "schema-changes", "notification", {}))["recipients"] == 0
    assert (await box.broadcast(tenant, "mapper", "unknown", "notification", {}))["recipients"] == 0
    [got] = await box.receive(tenant, "planner", 5)
    assert got["topic"] == "alerts" and got["sender"] == "mapper"
    restarted = mailbox(engine)
    assert await restarted.get_topics(tenant, "mapper") == {"agent": "mapper", "topics": ["alerts", "schema-changes"]}
    assert (await restarted.broadcast(tenant, "planner", "alerts", "notification", {}))["recipients"] == 2


async def test_request_response(engine, tenant):
    box = mailbox(engine, clock=__import__("time").time)

    async def responder() -> None:
        [request] = await box.receive(tenant, "risk", 1, wait=5)
        await box.send(tenant, [{"receiver": request["sender"], "sender": "risk", "type": "response",
                                 "content": {"score": 7}, "correlation_id": request["correlation_id"]}])
        await box.ack(tenant, "risk", request["message_id"])

    task = asyncio.create_task(responder())
    answer = await box.request(tenant, "mapper", "risk", {"assess": "app-1"}, 5)
    await task
    assert answer["response"]["content"] == {"score": 7} and answer["response"]["type"] == "response"
    assert await box.receive(tenant, "mapper", 5) == []  # the response was consumed by the helper
    with pytest.raises(MailboxError) as timeout:
        await box.request(tenant, "mapper", "silent-agent", {}, 0.1)
    assert timeout.value.status == 504 and timeout.value.code == "request_timeout"


async def test_restart_keeps_ready_and_in_flight(engine, tenant):
    clock = Clock()
    box = mailbox(engine, clock, visibility_timeout=10)
    await box.send(tenant, [msg(content={"n": i}) for i in range(3)])
    [taken] = await box.receive(tenant, "mapper", 1)
    restarted = mailbox(engine, clock, visibility_timeout=10)
    rest = await restarted.receive(tenant, "mapper", 10)
    assert [m["content"]["n"] for m in rest] == [1, 2]
    for m in rest:
        await restarted.ack(tenant, "mapper", m["message_id"])
    clock.now += 11
    [again] = await restarted.receive(tenant, "mapper", 10)
    assert again["message_id"] == taken["message_id"] and again["attempts"] == 2


async def test_failed_commit_changes_nothing_and_tenants_are_isolated(engine, tenant):
    box = mailbox(engine)
    await box.send(tenant, [msg()])
    real = box.store.write

    async def broken(writes):
        raise ConnectionError("database went away")

    box.store.write = broken
    for attempt in (box.send(tenant, [msg()]), box.receive(tenant, "mapper", 1), box.set_topics(tenant, "a", ["t"])):
        with pytest.raises(MailboxError) as error:
            await attempt
        assert error.value.status == 503
    box.store.write = real
    assert (await box.depth(tenant, "mapper")) == {"agent": "mapper", "ready": 1, "inflight": 0}
    assert await box.get_topics(tenant, "a") == {"agent": "a", "topics": []}
    assert await box.receive(tenant + "-other", "mapper", 5) == []
    [got] = await box.receive(tenant, "mapper", 5)
    assert got["attempts"] == 1


def gate_next_write(box: MailboxCore) -> asyncio.Event:
    """The store's next write waits until the returned event is set."""
    real, gate = box.store.write, asyncio.Event()

    async def gated(writes):
        box.store.write = real
        await gate.wait()
        await real(writes)

    box.store.write = gated
    return gate


async def test_a_second_commit_goes_out_while_one_is_in_flight(engine, tenant):
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer at a time: its mailbox keeps one commit in flight")
    box = mailbox(engine)
    gate = gate_next_write(box)
    slow = asyncio.create_task(box.send(tenant, [msg()]))
    await asyncio.sleep(0.05)
    [other] = await asyncio.wait_for(box.send(tenant + "-b", [msg()]), 5)
    assert not slow.done(), "the other tenant's send committed while the first commit was in flight"
    gate.set()
    await asyncio.wait_for(slow, 5)
    assert (await box.store.states(tenant + "-b", [other["message_id"]]))[other["message_id"]] == ("mapper", "ready")


async def test_an_ack_of_a_message_whose_hand_out_is_in_flight_is_stored_after_it(engine, tenant):
    """Two commits in flight may land in either order: the ack must not be overwritten by the
    hand-out it followed, or the message would come back after a restart."""
    box = mailbox(engine)
    [sent] = await box.send(tenant, [msg()])
    gate = gate_next_write(box)
    receiving = asyncio.create_task(box.receive(tenant, "mapper", 1))
    await asyncio.sleep(0.05)
    acking = asyncio.create_task(box.ack_many(tenant, "mapper", [sent["message_id"]]))
    await asyncio.sleep(0.05)
    assert not acking.done(), "the ack waits for the hand-out's commit"
    gate.set()
    await asyncio.wait_for(asyncio.gather(receiving, acking), 5)
    assert (await box.store.states(tenant, [sent["message_id"]]))[sent["message_id"]] == ("mapper", "acked")
    assert await mailbox(engine).receive(tenant, "mapper", 5) == [], "nothing comes back after a restart"


async def test_ack_many_in_one_commit(engine, tenant):
    clock = Clock()
    box = mailbox(engine, clock, max_attempts=1, visibility_timeout=1)
    sent = await box.send(tenant, [msg(content=i) for i in range(4)])
    ids = [m["message_id"] for m in sent]
    got = await box.receive(tenant, "mapper", 3)
    await box.ack(tenant, "mapper", got[0]["message_id"])
    clock.now += 2
    await box.sweep()  # got[1] and got[2] had their one attempt: dead
    commits = box.stats()["commits"]
    result = await box.ack_many(tenant, "mapper", [ids[0], ids[1], ids[3], "unknown", ids[3]])
    assert result == {"acked": [ids[3], ids[0]], "not_found": ["unknown"], "dead": [ids[1]]}
    assert box.stats()["commits"] == commits + 1
    assert await box.receive(tenant, "mapper", 5) == []


async def test_ack_many_looks_up_unknown_ids_in_one_query(engine, tenant):
    from sqlalchemy import event

    box = mailbox(engine)
    [sent] = await box.send(tenant, [msg()])
    unknown = [f"{i:032x}" for i in range(1000)]
    statements: list[str] = []

    def seen(_conn, _cursor, statement, *_args) -> None:
        statements.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", seen)
    try:
        result = await box.ack_many(tenant, "mapper", [*unknown, sent["message_id"]])
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", seen)
    assert result["not_found"] == unknown and result["acked"] == [sent["message_id"]]
    assert sum(s.lstrip().upper().startswith("SELECT") for s in statements) == 1


def test_writes_merge_keeps_the_latest_state_and_writes_new_rows_whole():
    """A group commit merges its operations' writes in order: a state change of a row new in the
    same commit goes into that row (one insert), a later state change of a stored row wins, and
    a later whole row supersedes an earlier state change."""
    merged = MailboxWrites(messages={"a": {"id": "a", "content": {"x": 1}, "state": "ready", "attempts": 0}},
                           states={"b": {"id": "b", "state": "inflight", "attempts": 1}})
    merged.merge(MailboxWrites(states={"a": {"id": "a", "state": "inflight", "attempts": 1},
                                       "b": {"id": "b", "state": "acked", "attempts": 1}}))
    merged.merge(MailboxWrites(messages={"c": {"id": "c", "state": "ready"}}, states={"d": {"id": "d", "state": "dead"}}))
    merged.merge(MailboxWrites(messages={"d": {"id": "d", "state": "ready", "content": None}},
                               topics={("t", "agent"): ["x"]}))
    assert merged.messages == {"a": {"id": "a", "content": {"x": 1}, "state": "inflight", "attempts": 1},
                               "c": {"id": "c", "state": "ready"}, "d": {"id": "d", "state": "ready", "content": None}}
    assert merged.states == {"b": {"id": "b", "state": "acked", "attempts": 1}}
    assert merged.topics == {("t", "agent"): ["x"]}


def test_messages_are_counted_by_receiver_as_they_come_and_go():
    """The queue quotas read these counts at every send instead of walking the tenant's queue."""
    import random
    from collections import Counter

    rng = random.Random(7)
    messages = Messages()
    for step in range(2_000):
        message_id = f"m{rng.randrange(60)}"
        if message_id in messages and rng.random() < 0.5:
            del messages[message_id]
        else:  # new, or the same id again (an undo puts a message back)
            messages[message_id] = Message(message_id, f"agent-{rng.randrange(4)}", "s", "notification", None,
                                           None, None, float(step))
        assert messages.per_receiver == Counter(m.receiver for m in messages.values())
