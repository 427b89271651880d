"""A TCP load balancer over the direct-ingress replicas, as a production load balancer does it.

With direct ingress every ingress replica listens on a port of its own, and Serve publishes where
("target groups": the controller's serve details, which the dashboard's Serve view also shows).
Clients need one address in front of them. In production that is HAProxy, nginx or a cloud load
balancer whose target group is kept in step with Serve's (docs/operations.md); this module is the
same thing, small enough for `raytenant run --replicas N` on a laptop and for CI:

- the targets are refreshed every second (`serve_targets`, or any coroutine returning them);
- each new client connection, HTTP or WebSocket, goes to the next target round-robin, and a target
  that refuses it (a replica that just died) is skipped for the next one;
- bytes are copied both ways until either side closes. A connection stays on its replica for its
  whole life, so the sockets of a replica that dies close, and their clients reconnect through the
  balancer to a live replica and resume from their `last_seq` (docs/websocket-protocol.md).
"""
from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections import Counter
from typing import Awaitable, Callable

log = logging.getLogger("raytenant.balancer")

Target = tuple[str, int]
Targets = Callable[[], Awaitable[list[Target]]]
CONNECT_TIMEOUT = 1.0
CHUNK = 64 * 1024
_BODY = b'{"error":{"code":"no_replica","message":"no ingress replica is available; retry"}}'
NO_REPLICA = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
              b"content-length: " + str(len(_BODY)).encode() + b"\r\nconnection: close\r\n\r\n" + _BODY)


def serve_targets(host: str = "127.0.0.1", proxy_port: int | None = None) -> Targets:
    """The HTTP targets of Serve's direct-ingress replicas, read from the controller (the driver
    must be connected to the cluster). Replicas bind the configured HTTP host, so `host` is used
    with the ports Serve reports; `proxy_port` (Serve's own proxy) is left out."""

    def read() -> list[Target]:
        from ray.serve.context import _get_global_client

        details = _get_global_client().get_serve_details()
        return sorted({
            (host, int(target["port"]))
            for group in details.get("target_groups", [])
            if str(group.get("protocol", "")).upper().endswith("HTTP")
            for target in group.get("targets", [])
            if target.get("port") and target["port"] != proxy_port
        })

    async def targets() -> list[Target]:
        return await asyncio.to_thread(read)

    return targets


class Balancer:
    """Listens on `host:port` and spreads connections over `targets()` (see the module doc)."""

    def __init__(self, targets: Targets, *, host: str = "127.0.0.1", port: int = 0, refresh: float = 1.0) -> None:
        self._read_targets, self.host, self.port, self.refresh = targets, host, port, refresh
        self.targets: list[Target] = []
        self.connections: Counter[Target] = Counter()  # connections forwarded, per target
        self.refused: Counter[Target] = Counter()  # connects a target refused (skipped)
        self._next = 0
        self._server: asyncio.AbstractServer | None = None
        self._refresher: asyncio.Task | None = None
        self._pipes: set[asyncio.Task] = set()

    async def start(self) -> tuple[str, int]:
        await self._refresh()
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        self._refresher = asyncio.create_task(self._refresh_forever())
        return self.host, self.port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def _refresh(self) -> None:
        try:
            found = await self._read_targets()
        except Exception as error:  # noqa: BLE001 - keep the targets it has; tried again next second
            log.warning("could not read the balancer's targets: %r", error)
            return
        if found != self.targets:
            log.info("balancer targets: %s", found)
            self.targets = list(found)

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.refresh)
            await self._refresh()

    async def _connect(self) -> tuple[Target, asyncio.StreamReader, asyncio.StreamWriter] | None:
        """The next target that accepts a connection, trying each at most once."""
        targets = list(self.targets)
        for _ in range(len(targets)):
            target = targets[self._next % len(targets)]
            self._next += 1
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(*target), CONNECT_TIMEOUT)
            except (OSError, asyncio.TimeoutError):
                self.refused[target] += 1
                continue
            return target, reader, writer
        return None

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)
        try:
            found = await self._connect()
            if found is None:  # no replica takes connections: what a load balancer answers
                client_writer.write(NO_REPLICA)
                await client_writer.drain()
                return
            target, reader, writer = found
            self.connections[target] += 1
            await asyncio.gather(_copy(client_reader, writer), _copy(reader, client_writer))
        finally:
            client_writer.close()
            self._pipes.discard(task)

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
        if self._server is not None:
            self._server.close()
        for task in list(self._pipes):
            task.cancel()
        if self._server is not None:
            await self._server.wait_closed()


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until the reading side closes or fails, then close the writing side (which ends the
    other direction too)."""
    try:
        while chunk := await reader.read(CHUNK):
            writer.write(chunk)
            await writer.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


def balancer_port() -> int:
    """The port `raytenant run` balances on when it runs several replicas (RAYTENANT_BALANCER_PORT)."""
    return int(os.environ.get("RAYTENANT_BALANCER_PORT", "8080"))


class BalancerThread:
    """A Balancer on an event loop of its own, for a synchronous caller (`raytenant run`)."""

    def __init__(self, balancer: Balancer) -> None:
        self.balancer = balancer
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> str:
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self.balancer.start())
            started.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True, name="balancer")
        self._thread.start()
        if not started.wait(timeout):
            raise RuntimeError("the balancer did not start")
        return self.balancer.url

    def stop(self) -> None:
        if self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self.balancer.close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
