"""Shared bench plumbing: a service under test (Ray Serve or the baseline), timing and output."""
from __future__ import annotations

import asyncio
import gc
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Iterator

if TYPE_CHECKING:
    from serve_app.client import AsyncClient

ROOT = Path(__file__).resolve().parent.parent
OPERATOR = "bench-operator-" + uuid.uuid4().hex[:8]


def emit(record: dict[str, Any]) -> None:
    """One machine-readable JSON line per figure."""
    print(json.dumps(record), flush=True)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"port {port} did not open")


@contextmanager
def client_heap_frozen() -> Iterator[None]:
    """Keep the measuring client's own garbage collector out of the latencies it measures.

    A bench holding thousands of sockets in one process has them, their tasks and their buffers
    in Python's oldest generation, and each full collection scans them all while no socket is
    read: at 10,000 sockets those pauses took 0.75-1.1 s, five times a minute, and were the whole
    p99 measured (a probe timing every collection in the bench and in the replica; the replica's
    own pauses during the hold stayed under 70 ms). A real client fleet is many processes on other
    machines. So while the sockets are held they are frozen out of the collector (as the service
    freezes its start-up objects, actors/substrate/gc_policy.py) and the collector is off; the
    garbage of the hold is collected after it (with the young generations still collecting, their
    50-95 ms pauses were the p99)."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.enable()
        gc.collect()


@contextmanager
def server_process(args: list[str], port: int) -> Iterator[str]:
    """Run `python <args>` as a server on `port` until the block ends; yields its base URL."""
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        wait_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def baseline_server() -> Iterator[str]:
    """The single-process uvicorn broadcaster, in its own process like a real server."""
    port = free_port()
    with server_process(["-m", "bench.baseline_broadcaster", str(port), OPERATOR], port) as url:
        yield url


@asynccontextmanager
async def tenant_clients(url: str, tenants: list[str], *, connections: int = 100,
                         scopes: list[str] | None = None) -> AsyncIterator[dict[str, "AsyncClient"]]:
    """One typed client per tenant (a token minted with `scopes`, else the default ones), all over
    one pool of at most `connections` connections: the load generator's, closed when the block ends."""
    from serve_app.auth import DEFAULT_SCOPES, Tokens
    from serve_app.client import AsyncClient, async_pool

    tokens = Tokens(OPERATOR)
    http = async_pool(connections=connections)
    try:
        yield {t: AsyncClient(url, tokens.mint(t, scopes=scopes or DEFAULT_SCOPES)[0], http=http) for t in tenants}
    finally:
        await http.close()


def bench_database(explicit: str | None) -> str:
    """The database for the shipped path: --database-url, else a fresh PostgreSQL database, else SQLite."""
    if explicit:
        return explicit
    try:
        import asyncpg

        async def create() -> None:
            conn = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/test", timeout=3)
            await conn.execute('DROP DATABASE IF EXISTS "raytenant_bench" WITH (FORCE)')
            await conn.execute('CREATE DATABASE "raytenant_bench"')
            await conn.close()

        asyncio.run(create())
        return "postgresql+asyncpg://postgres@127.0.0.1:5432/raytenant_bench"
    except Exception:
        path = Path("/tmp") / f"raytenant-bench-{uuid.uuid4().hex[:6]}.db"
        return f"sqlite+aiosqlite:///{path}"


@contextmanager
def raytenant_service(database_url: str, *, port: int = 8000, shards: int = 1, direct: bool = True,
                      settings: dict[str, Any] | None = None, replicas: int = 1) -> Iterator[list[str]]:
    """Ray + Serve with raytenant deployed; yields [direct URL, proxy URL] (or [proxy URL])."""
    from serve_app.cli.launcher import configure_environment

    configure_environment(direct_ingress=direct)
    from storage.migrate import upgrade

    upgrade(database_url)
    import ray
    from ray import serve

    from serve_app.cli.launcher import deploy, start_ray

    start_ray(num_cpus=2, dashboard=False)
    try:
        yield deploy({"database_url": database_url, "operator_token": OPERATOR, "hub_shards": shards, **(settings or {})},
                     port=port, num_replicas=replicas)
    finally:
        serve.shutdown()
        ray.shutdown()


def postgres(action: str) -> bool:
    """`pg_ctlcluster` for this machine's cluster: "stop" (fast: every session cut at once) or
    "start". Returns whether it did something (False: it was already in that state)."""
    import glob

    version = sorted(p.rsplit("/", 1)[1] for p in glob.glob("/etc/postgresql/*"))[-1]
    extra = ["-m", "fast"] if action == "stop" else []
    done = subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action, *extra],
                          check=False, capture_output=True, timeout=60)
    return done.returncode == 0


class ResumingListener:
    """A WebSocket client that resumes from its last seq whenever its socket closes, as a client
    of the service should: subscribed to all the tenant's flows in the query, so the resume's
    replay covers them (docs/websocket-protocol.md). `connected` is set once the server attached
    the first socket (its `connection_established`): events published after it reach this client.

    It keeps every frame's seq as the server sent it: the chaos and replica scenarios audit the
    wire (a seq the server sent twice, or out of order), which the typed client's `stream()`
    would hide, since it delivers each seq once by design."""

    def __init__(self, ws_url: str, token: str) -> None:
        self.ws_url, self.token = ws_url, token
        self.seqs: list[int] = []
        self.reconnects = 0
        self.connected = asyncio.Event()
        self.stop = asyncio.Event()

    async def run(self) -> None:
        import websockets

        while not self.stop.is_set():
            query = "?flow_id=*" + (f"&last_seq={self.seqs[-1]}" if self.seqs else "")
            try:
                async with websockets.connect(self.ws_url + query, open_timeout=10,
                                              additional_headers={"Authorization": f"Bearer {self.token}"}) as ws:
                    while not self.stop.is_set():
                        try:
                            message = json.loads(await asyncio.wait_for(ws.recv(), 0.5))
                        except asyncio.TimeoutError:
                            continue
                        if message.get("type") == "connection_established":
                            self.connected.set()
                        elif message.get("type") == "flow_update" and "seq" in message:
                            self.seqs.append(message["seq"])
            except (websockets.ConnectionClosed, websockets.InvalidHandshake, OSError, asyncio.TimeoutError):
                self.reconnects += 1
                await asyncio.sleep(0.3)
