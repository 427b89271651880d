"""serve_app/cli/balancer.py on real loopback sockets: round-robin over the targets, a target that
refuses connections skipped, 503 when none takes it, bytes both ways, targets refreshed."""
from __future__ import annotations

import asyncio
import socket

from serve_app.cli.balancer import Balancer, BalancerThread


async def echo_server(name: bytes) -> tuple[asyncio.AbstractServer, int]:
    """Answers every line with its name and the line, until the client closes."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            writer.write(name + b":" + line)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def ask(port: int, line: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(line)
    await writer.drain()
    answer = await reader.readline()
    writer.close()
    return answer


async def test_round_robin_skips_a_dead_target_and_refreshes():
    (one, one_port), (two, two_port) = await echo_server(b"one"), await echo_server(b"two")
    targets = [("127.0.0.1", one_port), ("127.0.0.1", closed_port()), ("127.0.0.1", two_port)]

    async def read_targets():
        return list(targets)

    balancer = Balancer(read_targets, refresh=0.05)
    _, port = await balancer.start()
    try:
        answers = [await ask(port, b"hi\n") for _ in range(4)]
        assert answers == [b"one:hi\n", b"two:hi\n", b"one:hi\n", b"two:hi\n"]  # the dead one skipped
        assert sum(balancer.refused.values()) == 2
        targets[:] = [("127.0.0.1", two_port)]  # a replica left the target group
        await asyncio.sleep(0.2)
        assert balancer.targets == [("127.0.0.1", two_port)]
        assert {await ask(port, b"x\n") for _ in range(3)} == {b"two:x\n"}
    finally:
        await balancer.close()
        one.close()
        two.close()


async def test_no_live_target_answers_503():
    async def read_targets():
        return [("127.0.0.1", closed_port())]

    balancer = Balancer(read_targets)
    _, port = await balancer.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answer = await reader.read()
        writer.close()
        assert answer.startswith(b"HTTP/1.1 503 ") and b'"code":"no_replica"' in answer
    finally:
        await balancer.close()


async def test_targets_that_cannot_be_read_keep_the_last_ones():
    server, server_port = await echo_server(b"one")
    calls = 0

    async def read_targets():
        nonlocal calls
        calls += 1
        if calls > 1:
            raise ConnectionError("the controller is restarting")
        return [("127.0.0.1", server_port)]

    balancer = Balancer(read_targets, refresh=0.05)
    _, port = await balancer.start()
    try:
        await asyncio.sleep(0.2)
        assert calls > 1 and await ask(port, b"still\n") == b"one:still\n"
    finally:
        await balancer.close()
        server.close()


def test_balancer_thread_serves_a_synchronous_caller():
    async def read_targets():
        return []

    thread = BalancerThread(Balancer(read_targets))
    url = thread.start()
    try:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            assert sock.recv(100).startswith(b"HTTP/1.1 503 ")
    finally:
        thread.stop()
