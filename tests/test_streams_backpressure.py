"""Slow consumers, expired resumes and the router's delivery rules."""
from __future__ import annotations

import asyncio
import base64
import json
import os
import socket

import pytest
import websockets

from serve_app.runtime import Runtime
from serve_app.streams import CLOSE_SLOW_CONSUMER, Connection, StreamRouter
from storage.events import Event
from tests.conftest import LiveServer, settings_for
from tests.wsutil import connect, publish, recv, recv_until


async def test_full_queue_closes_with_4008():
    closed = []
    stuck = asyncio.Event()

    async def send(_text):
        await stuck.wait()  # a consumer that never reads

    async def close(code, reason):
        closed.append((code, reason))

    conn = Connection("t", None, send, close, queue_size=3)
    conn.start_writer()
    for seq in range(1, 10):
        conn.deliver(Event("t", seq, "flow_update", None, {}, 0.0), "{}")
    await asyncio.sleep(0.01)
    assert closed and closed[0][0] == CLOSE_SLOW_CONSUMER
    assert conn.closed and conn.last_sent < 9
    assert not conn.offer("{}"), "nothing is queued after the close"


async def test_router_drops_duplicates_and_unwanted_flows():
    sent = []

    async def send(text):
        sent.append(json.loads(text)["seq"])

    closes = []

    async def close(code, reason):
        closes.append(code)

    class Hub:
        def shard_of(self, tenant):
            return 0

        async def head(self, tenant):
            return 0

        async def poll(self, *args):
            await asyncio.sleep(3600)

        async def report_presence(self, *args):
            return None  # presence is not what this test looks at

        async def join(self, *args):
            return True

    router = StreamRouter(Hub(), "r", presence_interval=3600)
    conn = Connection("t", None, send, close)
    conn.flows.add("f")
    await router.connect(conn)
    conn.start_writer()
    events = [Event("t", s, "flow_update", "f" if s != 3 else "g", {}, 0.0) for s in (1, 2, 3, 4)]
    router.dispatch("t", events[:2])
    router.dispatch("t", events)  # a repeated poll page
    router.dispatch("other", events)  # no feed for that tenant here
    await asyncio.sleep(0.01)
    assert sent == [1, 2, 4] and closes == []  # duplicates and other flows are dropped, not fatal
    assert router.presence_counts() == {"t": {"*": 1, "f": 1}}
    router.disconnect(conn)
    assert router.feeds == {} and router.connections == {}
    await router.stop()


@pytest.mark.integration
async def test_slow_socket_is_closed_4008_and_can_resume(ray_session, db_url, backend, tenant):
    settings = settings_for(db_url, backend, send_queue_size=4)
    async with LiveServer(Runtime(settings)) as live:
        ws = await websockets.connect(
            live.ws_url, additional_headers=live.auth(tenant), max_size=2**24, max_queue=1
        )
        hello = json.loads(await ws.recv())
        big = "z" * 60_000
        for _ in range(40):
            await publish(live.url, live.auth(tenant), [{"type": "budget_alert", "data": {"pad": big}}] * 10)
        codes = []
        try:
            while True:
                await asyncio.wait_for(ws.recv(), 10)
        except websockets.ConnectionClosed as closed:
            codes.append(closed.rcvd.code if closed.rcvd else None)
        assert codes == [CLOSE_SLOW_CONSUMER]
        assert live.runtime.router.slow_closed >= 1
        # Resuming from the start delivers everything, paced by the reader.
        ws = await connect(live.ws_url, live.token(tenant), last_seq=hello["last_seq"])
        got = await recv_until(ws, lambda m: m["type"] == "resume_completed", timeout=30)
        assert [m["seq"] for m in got if m["type"] == "budget_alert"] == list(range(1, 401))
        await ws.close()


@pytest.mark.integration
async def test_resume_beyond_retention_fails_with_oldest_seq(ray_session, db_url, backend, tenant):
    settings = settings_for(db_url, backend, hub_retention=5, actor_prefix=f"test-{backend}-short-")
    async with LiveServer(Runtime(settings)) as live:
        await publish(live.url, live.auth(tenant), [{"type": "flow_update", "data": {"i": i}} for i in range(12)])
        ws = await connect(live.ws_url, live.token(tenant))
        await recv(ws)
        await ws.send(json.dumps({"type": "resume", "last_seq": 1}))
        failed = await recv(ws)
        assert failed["type"] == "resume_failed" and failed["oldest_seq"] == 8 and failed["head"] == 12
        await publish(live.url, live.auth(tenant), [{"type": "flow_update", "data": {}}])
        assert (await recv(ws))["seq"] == 13, "the connection continues live"
        await ws.close()


async def stuck_client(base_url: str, token: str) -> socket.socket:
    """A WebSocket client that completes the handshake and then never reads: a small receive
    buffer, so the server's writes back up into its own queue within a few hundred KB."""
    host, port = base_url.rsplit("/", 1)[1].split(":")
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    raw.connect((host, int(port)))
    key = base64.b64encode(os.urandom(16)).decode()
    raw.sendall((f"GET /v1/ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += await asyncio.to_thread(raw.recv, 1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return raw


async def close_code_of(raw: socket.socket) -> int | None:
    """Read everything the server sent, frame by frame, up to its close frame; its close code."""
    raw.settimeout(10)
    buffer = b""

    def read(n: int) -> bytes:
        nonlocal buffer
        while len(buffer) < n:
            chunk = raw.recv(1 << 16)
            if not chunk:
                raise ConnectionError("closed without a close frame")
            buffer += chunk
        data, buffer = buffer[:n], buffer[n:]
        return data

    def frames() -> int | None:
        while True:
            first, second = read(2)
            length = second & 0x7F
            if length == 126:
                length = int.from_bytes(read(2), "big")
            elif length == 127:
                length = int.from_bytes(read(8), "big")
            payload = read(length)
            if first & 0x0F == 0x8:
                return int.from_bytes(payload[:2], "big")

    try:
        return await asyncio.to_thread(frames)
    finally:
        raw.close()


@pytest.mark.integration
async def test_a_socket_that_stops_reading_is_closed_and_others_keep_up(ray_session, db_url, backend, tenant):
    """A real client that stops reading 8 KB events: its queue fills and it is closed with 4008,
    while a reading socket of the same tenant gets every event of each batch before the next one
    is published: no batch waits on the stuck socket."""
    settings = settings_for(db_url, backend, send_queue_size=16)
    async with LiveServer(Runtime(settings)) as live:
        stuck = await stuck_client(live.url, live.token(tenant))
        reader = await connect(live.ws_url, live.token(tenant))
        assert (await recv(reader))["type"] == "connection_established"
        pad = "y" * 8_192
        seen = 0
        for batch in range(100):  # until the socket's buffers and its queue of 16 are full
            seqs = await publish(live.url, live.auth(tenant), [{"type": "agent_insight", "data": {"pad": pad}}] * 10)
            got = await recv_until(reader, lambda m: m.get("seq") == seqs[-1], timeout=10)
            seen += sum(1 for m in got if m["type"] == "agent_insight")
            if live.runtime.router.slow_closed:
                break
        assert live.runtime.router.slow_closed >= 1, "the stuck socket was never closed"
        assert seen == (batch + 1) * 10  # every event reached the reading socket, batch by batch
        assert await close_code_of(stuck) == CLOSE_SLOW_CONSUMER  # read at last: the close frame ends the stream
        await reader.send('{"type": "ping"}')
        assert (await recv_until(reader, lambda m: m["type"] == "pong"))[-1]["type"] == "pong"
        await reader.close()
