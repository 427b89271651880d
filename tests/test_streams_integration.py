"""End to end over real sockets: the ingress app, EventHub actors in Ray, and the database."""
from __future__ import annotations

import asyncio
import json

import pytest
import ray
import websockets

from actors.substrate.placement import NAMESPACE, shard_name
from serve_app.client import RaytenantError
from tests.wsutil import connect, drain, publish, recv, recv_until

pytestmark = pytest.mark.integration


async def test_connect_subscribe_and_receive(live, tenant):
    ws = await connect(live.ws_url, live.token(tenant), flow_id="flow-1")
    hello = await recv(ws)
    assert hello["type"] == "connection_established"
    assert hello["tenant"] == tenant and hello["last_seq"] == 0 and hello["connection_id"]
    assert await recv(ws) == {"type": "subscription_confirmed", "flow_id": "flow-1"}
    seqs = await publish(
        live.url,
        live.auth(tenant),
        [
            {"type": "flow_update", "flow_id": "flow-1", "data": {"progress": 10}},
            {"type": "flow_update", "flow_id": "other-flow", "data": {"progress": 99}},
            {"type": "budget_alert", "data": {"used": 0.8}},
            {"type": "flow_completed", "flow_id": "flow-1", "data": {"results": {"ok": True}}},
        ],
    )
    assert seqs == [1, 2, 3, 4]
    got = [await recv(ws) for _ in range(3)]
    assert [(m["type"], m["seq"], m["flow_id"]) for m in got] == [
        ("flow_update", 1, "flow-1"),
        ("budget_alert", 3, None),
        ("flow_completed", 4, "flow-1"),
    ]
    assert got[0]["data"] == {"progress": 10} and got[0]["ts"].endswith("Z")
    await ws.send(json.dumps({"type": "ping"}))
    pong = await recv(ws)
    assert pong["type"] == "pong" and pong["last_seq"] == 4
    await ws.send(json.dumps({"type": "unsubscribe_flow", "flow_id": "flow-1"}))
    assert await recv(ws) == {"type": "unsubscription_confirmed", "flow_id": "flow-1"}
    await publish(live.url, live.auth(tenant), [{"type": "flow_update", "flow_id": "flow-1", "data": {}}])
    assert await drain(ws, 0.5) == []
    await ws.close()


async def test_tenants_are_isolated_even_naming_each_others_flows(live, tenant):
    other = tenant + "-b"
    ws_a = await connect(live.ws_url, live.token(tenant), flow_id="shared-flow")
    ws_b = await connect(live.ws_url, live.token(other), flow_id="shared-flow")
    for ws in (ws_a, ws_b):
        await recv_until(ws, lambda m: m["type"] == "subscription_confirmed")
    await ws_b.send(json.dumps({"type": "subscribe_flow", "flow_id": "*"}))
    await recv_until(ws_b, lambda m: m["type"] == "subscription_confirmed")
    await publish(
        live.url,
        live.auth(tenant),
        [{"type": "flow_update", "flow_id": "shared-flow", "data": {"secret": "a"}}, {"type": "budget_alert", "data": {}}],
    )
    got_a = [await recv(ws_a), await recv(ws_a)]
    assert [m["type"] for m in got_a] == ["flow_update", "budget_alert"]
    assert await drain(ws_b, 1.0) == []
    # B's replay and presence show nothing of A's.
    async with live.client(other) as theirs, live.client(tenant) as rt:
        assert (await theirs.events.replay(0, flow_id="shared-flow"))["events"] == []
        presence = await theirs.events.connections()
        assert presence["connections"] == 1 and presence["tenant"] == other
        mine = await rt.events.connections()
        assert mine["connections"] == 1 and mine["flows"] == {"shared-flow": 1}
    await ws_a.close()
    await ws_b.close()


async def test_resume_after_disconnect_has_no_gap_and_no_duplicate(live, tenant):
    ws = await connect(live.ws_url, live.token(tenant), flow_id="f")
    await recv_until(ws, lambda m: m["type"] == "subscription_confirmed")
    await publish(live.url, live.auth(tenant), [{"type": "flow_update", "flow_id": "f", "data": {"i": i}} for i in range(5)])
    received = [await recv(ws) for _ in range(5)]
    last_seq = received[-1]["seq"]
    await ws.close()

    # Missed while away: 20 events, some for other flows.
    await publish(
        live.url,
        live.auth(tenant),
        [{"type": "flow_update", "flow_id": "f" if i % 4 else "g", "data": {"i": 5 + i}} for i in range(20)],
    )
    # Reconnect with last_seq in the URL and keep publishing concurrently while the replay runs.
    ws = await connect(live.ws_url, live.token(tenant), flow_id="f", last_seq=last_seq)
    publisher = asyncio.create_task(
        publish(live.url, live.auth(tenant), [{"type": "flow_update", "flow_id": "f", "data": {"i": 100 + i}} for i in range(10)])
    )
    await publisher
    expected = [s for s in range(last_seq + 1, 36) if (s - last_seq - 1) % 4 != 0 or s > 25]
    # Everything up to the last expected seq (a bound, not a timing: a live event can wait for the
    # hub's next poll), then a quiet moment for anything sent twice.
    messages = []
    while not any(m.get("seq") == expected[-1] for m in messages):
        messages.append(await recv(ws, timeout=20))
    messages += await drain(ws, 1.0)
    events = [m for m in messages if m["type"] == "flow_update"]
    seqs = [m["seq"] for m in events]
    assert seqs == sorted(set(seqs)), "in order, no duplicates"
    assert seqs == expected
    assert any(m["type"] == "resume_completed" for m in messages)
    await ws.close()


async def test_resume_message_after_connect(live, tenant):
    await publish(live.url, live.auth(tenant), [{"type": "agent_insight", "flow_id": "f", "data": {"n": i}} for i in range(3)])
    ws = await connect(live.ws_url, live.token(tenant))
    hello = await recv(ws)
    assert hello["last_seq"] == 3
    await ws.send(json.dumps({"type": "subscribe_flow", "flow_id": "f"}))
    await recv(ws)
    await ws.send(json.dumps({"type": "resume", "last_seq": 1}))
    got = await recv_until(ws, lambda m: m["type"] == "resume_completed")
    assert [m["seq"] for m in got if m["type"] == "agent_insight"] == [2, 3]
    assert got[-1]["replayed"] == 2
    await ws.send(json.dumps({"type": "resume", "last_seq": "x"}))
    assert (await recv(ws))["code"] == "invalid_last_seq"
    await ws.close()


async def test_hub_shard_killed_loses_no_acknowledged_event(live, tenant, backend):
    hub = live.runtime.hub
    acked: list[int] = []
    for i in range(10):
        acked += await publish(live.url, live.auth(tenant), [{"type": "flow_update", "flow_id": "k", "data": {"i": i}}])
    handle = ray.get_actor(shard_name(hub.kind, hub.shard_of(tenant)), namespace=NAMESPACE)
    ray.kill(handle, no_restart=False)
    # Publishing while the shard restarts either succeeds (acknowledged) or fails with 503.
    async with live.client(tenant) as rt:
        for i in range(30):
            try:
                acked += (await rt.events.publish({"type": "flow_update", "flow_id": "k", "data": {"i": 100 + i}}))["seqs"]
            except RaytenantError as error:
                assert (error.status, error.code) == (503, "stream_unavailable"), error
            await asyncio.sleep(0.05)
        replay = await rt.events.replay(0, limit=1000)
    stored = [e["seq"] for e in replay["events"]]
    assert set(acked) <= set(stored)
    assert stored == sorted(set(stored))
    assert len(acked) > 10, "the restarted shard accepts events again"


async def test_bad_and_expired_tokens_close_4001(live, tenant):
    for token in (None, "not-a-jwt", live.token(tenant, ttl=1, now=1_000_000), "test-operator-token"):
        ws = await connect(live.ws_url, token)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await recv(ws)
        assert closed.value.rcvd.code == 4001
    forged = live.token(tenant)[:-4] + "AAAA"
    ws = await connect(live.ws_url, None, token=forged)
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await recv(ws)
    assert closed.value.rcvd.code == 4001
    # The token query parameter works for browsers.
    ws = await connect(live.ws_url, None, token=live.token(tenant))
    assert (await recv(ws))["type"] == "connection_established"
    await ws.close()


async def test_malformed_and_oversized_frames(live, tenant):
    ws = await connect(live.ws_url, live.token(tenant))
    await recv(ws)
    await ws.send("{not json")
    assert (await recv(ws))["code"] == "malformed_json"
    await ws.send("[1, 2]")
    assert (await recv(ws))["code"] == "malformed_json"
    await ws.send(json.dumps({"type": "dance"}))
    error = await recv(ws)
    assert error["type"] == "error" and error["code"] == "unknown_type"
    await ws.send(json.dumps({"type": "subscribe_flow", "flow_id": 12}))
    assert (await recv(ws))["code"] == "invalid_flow_id"
    await ws.send(json.dumps({"type": "ping"}))
    assert (await recv(ws))["type"] == "pong", "the connection stays after errors"
    await ws.send("x" * (64 * 1024 + 1))
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await recv(ws)
    assert closed.value.rcvd.code == 1009


async def test_two_hundred_connections_all_receive_a_broadcast(live, tenant):
    tenants = [f"{tenant}-{i % 7}" for i in range(210)]
    sockets = await asyncio.gather(*(connect(live.ws_url, live.token(t), flow_id="wide") for t in tenants))
    for ws in sockets:
        await recv_until(ws, lambda m: m["type"] == "subscription_confirmed")
    seqs = {}
    for t in sorted(set(tenants)):
        [seqs[t]] = await publish(live.url, live.auth(t), [{"type": "flow_update", "flow_id": "wide", "data": {"t": t}}])
    got = await asyncio.gather(*(recv(ws, 20) for ws in sockets))
    for t, message in zip(tenants, got):
        assert message["data"] == {"t": t} and message["seq"] == seqs[t]
    await asyncio.gather(*(ws.close() for ws in sockets))
