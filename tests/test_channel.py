"""The direct hub channel: framing, auth, concurrency, errors; and the hub over both transports."""
from __future__ import annotations

import asyncio

import pytest

from actors.substrate.channel import ChannelClient, ChannelError, ChannelServer, RemoteError
from actors.event_hub.client import EventHubClient


async def start_server():
    async def echo(value):
        return value

    async def slow(value, delay):
        await asyncio.sleep(delay)
        return value

    async def boom():
        raise ValueError("no such tenant")

    server = ChannelServer({"echo": echo, "slow": slow, "boom": boom}, "s3cret")
    host, port = await server.start("127.0.0.1")
    return server, host, port


async def test_calls_match_replies_out_of_order():
    server, host, port = await start_server()
    client = await ChannelClient(host, port, "s3cret").connect()
    results = await asyncio.gather(client.call("slow", "late", 0.05), client.call("echo", {"a": [1, 2]}))
    assert results == ["late", {"a": [1, 2]}]
    with pytest.raises(RemoteError, match="no such tenant"):
        await client.call("boom")
    with pytest.raises(RemoteError, match="KeyError"):
        await client.call("missing")
    assert await client.call("echo", 5) == 5, "remote errors leave the channel usable"
    await client.close()
    with pytest.raises(ChannelError):
        await client.call("echo", 1)
    await server.close()


async def test_wrong_secret_is_refused():
    server, host, port = await start_server()
    client = await ChannelClient(host, port, "guess").connect()
    with pytest.raises(ChannelError):
        await asyncio.wait_for(client.call("echo", 1), 5)
    assert client.closed
    await server.close()


async def test_server_going_away_fails_pending_calls():
    server, host, port = await start_server()
    client = await ChannelClient(host, port, "s3cret").connect()
    pending = asyncio.create_task(client.call("slow", 1, 10))
    await asyncio.sleep(0.05)
    await server.close()
    for task in asyncio.all_tasks():  # drop the server side of the connection, as a dying process would
        if task.get_coro().__qualname__.startswith("ChannelServer."):
            task.cancel()
    with pytest.raises(ChannelError):
        await asyncio.wait_for(pending, 5)
    assert client.closed


@pytest.mark.integration
@pytest.mark.parametrize("use_channel", [True, False])
async def test_hub_client_over_both_transports(ray_session, db_url, backend, tenant, use_channel):
    hub = EventHubClient(db_url, 2, kind=f"test-{backend}-event-hub", use_channel=use_channel)
    assert await hub.append(tenant, [{"type": "flow_update", "flow_id": "f", "data": {"i": 1}}]) == [1]
    stored = await hub.append_events(tenant, [{"type": "budget_alert", "flow_id": None, "data": {}}])
    assert stored[0].seq == 2 and stored[0].tenant == tenant
    assert await hub.head(tenant) == 2
    page = await hub.read(tenant, 0, flow_ids=["f"])
    assert [(e.seq, e.type) for e in page["events"]] == [(1, "flow_update"), (2, "budget_alert")]
    polled = await hub.poll(hub.shard_of(tenant), {tenant: 1}, 1.0)
    assert [e.seq for e in polled["events"][tenant]] == [2]
    await hub.close()


@pytest.mark.integration
async def test_a_closed_channel_is_reopened_for_the_next_call(ray_session, db_url, backend, tenant):
    hub = EventHubClient(db_url, 1, kind=f"test-{backend}-event-hub")
    await hub.append(tenant, [{"type": "flow_update"}])
    first = hub._channels[0]
    await first.close()  # as if the shard had restarted between calls
    assert await hub.append(tenant, [{"type": "flow_update"}]) == [2]
    assert hub._channels[0] is not first and not hub._channels[0].closed
    await hub.close()
