"""The typed client (serve_app/client.py), sync and async, against a live service on PostgreSQL:
every area's calls, errors as RaytenantError with the documented code, and a stream that resumes
through a dropped connection without losing or repeating an event."""
from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from serve_app.client import AsyncClient, Client, RaytenantError, Unreachable
from tests.http_support import MODEL

pytestmark = pytest.mark.asyncio


class CuttableProxy:
    """A loopback TCP proxy whose connections the test can cut, as a network or a balancer would."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.writers: list[asyncio.StreamWriter] = []
        self.connections = 0

    async def __aenter__(self) -> "CuttableProxy":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.cut()
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers += [writer, up_writer]

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):  # a cut ends the pumping
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    def cut(self) -> None:
        for writer in self.writers:
            writer.transport.abort()
        self.writers.clear()


async def test_the_stream_resumes_through_a_cut_connection_with_every_event_once(pg_live, tenant):
    port = int(pg_live.url.rsplit(":", 1)[1])
    async with CuttableProxy(port) as proxy, AsyncClient(pg_live.url, pg_live.token(tenant)) as direct, \
            AsyncClient(proxy.url, pg_live.token(tenant)) as through:
        got: list[dict[str, Any]] = []
        heads: list[int] = []
        ready = asyncio.Event()

        async def read() -> None:
            async for event in through.stream(flow_id="f-1", retry_seconds=0.05, connected=lambda m: (
                    heads.append(m["last_seq"]), ready.set())):
                got.append(event)
                if len(got) == 6:
                    return

        reader = asyncio.create_task(read())
        await asyncio.wait_for(ready.wait(), 10)
        first = await direct.events.publish([{"type": "flow_update", "flow_id": "f-1", "data": {"n": i}}
                                             for i in range(3)])
        for _ in range(200):
            if len(got) == 3:
                break
            await asyncio.sleep(0.02)
        proxy.cut()  # the socket dies; these are published while the client is away
        second = await direct.events.publish([{"type": "flow_update", "flow_id": "f-1", "data": {"n": i}}
                                              for i in range(3, 6)])
        await asyncio.wait_for(reader, 15)
        assert [e["seq"] for e in got] == first["seqs"] + second["seqs"]
        assert [e["data"]["n"] for e in got] == list(range(6))
        assert proxy.connections >= 2 and len(heads) >= 2  # it did reconnect


async def test_a_stream_with_a_bad_token_stops_with_the_close_code(pg_live):
    async with AsyncClient(pg_live.url, "not-a-token") as rt:
        with pytest.raises(RaytenantError) as error:
            await anext(rt.stream(max_retries=3, retry_seconds=0.01))
    assert error.value.status == 4001 and error.value.code == "unauthorized"


async def test_every_area_through_the_async_client(pg_live, tenant):
    operator = pg_live.runtime.settings.operator_token
    async with AsyncClient(pg_live.url, operator_token=operator) as op:
        minted = await op.tokens.mint(tenant, user="ann", scopes=["*"])
        assert minted["tenant"] == tenant
        assert (await op.admin.set_cap(tenant, 100))["month"]
        assert (await op.admin.limits(tenant))["tenant"] == tenant
    async with AsyncClient(pg_live.url, minted["token"]) as rt:
        assert (await rt.events.publish({"type": "agent_insight", "data": {}}))["seqs"]
        assert (await rt.events.replay(0))["events"]
        assert (await rt.events.connections())["tenant"] == tenant
        await rt.costs.set_budget(10)
        assert (await rt.costs.record({"model": MODEL, "input_tokens": 10, "output_tokens": 5}))["cost"] > 0
        batch = await rt.costs.record([{"model": MODEL, "input_tokens": 1, "output_tokens": 1}] * 2)
        assert len(batch["records"]) == 2
        held = await rt.costs.reserve(MODEL, 100, 50)
        assert (await rt.costs.settle(held["reservation_id"], 10, 5))["reserved"] > 0
        assert (await rt.costs.release((await rt.costs.reserve(MODEL, 1, 1))["reservation_id"]))["state"] == "released"
        assert (await rt.costs.budget())["used"] > 0
        await rt.costs.set_level("agent", "mapper", amount=1.0)
        assert [level["key"] for level in (await rt.costs.levels("agent"))["levels"]] == ["mapper"]
        odd = "team #1?x=y&z"  # an id with URL syntax in it is one path segment, not a query or a fragment
        await rt.costs.set_level("user", odd, amount=2.0)
        assert (await rt.costs.level("user", odd))["key"] == odd
        assert (await rt.costs.delete_level("user", odd))["deleted"]["key"] == odd
        assert (await rt.costs.summary())["total_requests"] == 4
        assert "recommendations" in await rt.costs.recommendations()
        assert (await rt.costs.select_model("simple"))["model"]
        assert (await rt.costs.estimate(MODEL, 1000, 500))["model"] == MODEL
        assert (await rt.costs.prices(MODEL))["prices"]
        learned = await rt.learning.correct("cust_nm", "customer_name", {"field": "cust_nm"})
        assert isinstance((await rt.learning.recommend({"field": "cust_nm"}))["recommendations"], list)
        await rt.learning.feedback(learned["pattern_id"], True)
        assert (await rt.learning.stats())
        mapped = await rt.mappings.map(["cust_nm"], ["customer_name", "email"])
        assert mapped["mappings"]
        await rt.mappings.correct("cust_nm", "customer_name")
        sent = await rt.agents.send("planner", "mapper", {"hello": 1})
        [message] = (await rt.agents.receive("planner"))["messages"]
        assert message["message_id"] == sent["message_ids"][0]
        await rt.agents.ack("planner", message["message_id"])
        assert (await rt.agents.set_topics("planner", ["news"]))["topics"] == ["news"]
        assert (await rt.agents.broadcast("news", "mapper", "hi"))
        assert (await rt.agents.depth("planner"))
        flows = await rt.flows.list()
        assert flows["flows"] == []
        with pytest.raises(RaytenantError) as error:
            await rt.costs.reserve(MODEL, -1, 1)
        assert (error.value.status, error.value.code) == (422, "invalid_tokens")
        with pytest.raises(RaytenantError) as error:
            await rt.flows.get("0" * 32)
        assert error.value.code == "flow_not_found"


async def test_the_sync_client_does_the_same_calls(pg_live, tenant):
    def work() -> tuple[Any, ...]:
        with Client(pg_live.url, pg_live.token(tenant)) as rt:
            seqs = rt.events.publish([{"type": "flow_update", "flow_id": "s", "data": {"n": i}} for i in range(3)])
            replayed = rt.events.replay(0, flow_id="s")
            stream = rt.stream(flow_id="s", last_seq=0)
            streamed = [next(stream)["seq"] for _ in range(3)]
            stream.close()
            try:
                rt.costs.record({"model": "", "input_tokens": 1, "output_tokens": 1})
            except RaytenantError as error:
                refused = error.code
            return seqs["seqs"], [e["seq"] for e in replayed["events"]], streamed, refused

    seqs, replayed, streamed, refused = await asyncio.to_thread(work)
    assert seqs == replayed == streamed
    assert refused == "invalid_model"


async def _answer_with(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, answer: bytes | None) -> None:
    """A loopback HTTP/1.1 server's one move: read a request, then answer `answer` (None: never)."""
    await reader.readuntil(b"\r\n\r\n")
    if answer is None:
        await reader.read()  # until the client gives up and closes
        return
    writer.write(answer)
    await writer.drain()
    writer.close()


async def test_the_async_client_decodes_answers_and_names_a_missing_one():
    """AsyncClient's requests go over aiohttp: a compressed answer is decoded; a hundred requests
    in flight share its pool; a refused connection and a silent server raise `Unreachable` (a
    RaytenantError with status 0), as the sync client does, so callers catch one error type."""
    import gzip

    body = gzip.compress(b'{"events": [], "head": 7}')
    gzipped = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
               b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)) + body
    served = await asyncio.start_server(lambda r, w: _answer_with(r, w, gzipped), "127.0.0.1", 0)
    silent = await asyncio.start_server(lambda r, w: _answer_with(r, w, None), "127.0.0.1", 0)
    closed = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    closed_url = f"http://127.0.0.1:{closed.sockets[0].getsockname()[1]}"
    closed.close()
    await closed.wait_closed()
    silent_url = f"http://127.0.0.1:{silent.sockets[0].getsockname()[1]}"
    try:
        async with AsyncClient(f"http://127.0.0.1:{served.sockets[0].getsockname()[1]}", "token") as rt:
            assert await asyncio.gather(*(rt.events.replay() for _ in range(100))) == [{"events": [], "head": 7}] * 100
        async with AsyncClient(closed_url, "token") as rt:
            with pytest.raises(Unreachable) as error:
                await rt.events.replay()
            assert (error.value.status, error.value.code) == (0, "unreachable")
        async with AsyncClient(silent_url, "token", timeout=0.3) as rt:
            with pytest.raises(Unreachable) as error:
                await rt.events.replay()
            assert (error.value.status, error.value.code) == (0, "timeout")

        def sync_calls() -> list[str]:
            codes = []
            for url, timeout in ((closed_url, 5.0), (silent_url, 0.3)):
                with Client(url, "token", timeout=timeout) as rt:
                    try:
                        rt.events.replay()
                    except Unreachable as error:
                        codes.append(error.code)
            return codes

        assert await asyncio.to_thread(sync_calls) == ["unreachable", "timeout"]
    finally:
        served.close()
        silent.close()
