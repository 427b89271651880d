"""Ingress paths compared: Serve direct ingress, the Serve proxy, and plain uvicorn.

For each path: GET /healthz throughput and latency at a fixed concurrency, and WebSocket ping->pong
round trips over many open sockets. The plain-uvicorn figure is the ceiling (the same Starlette
app in one process, no Serve). One JSON line per path and measure, plus ratios against the proxy.

    python -m bench.ingress_paths --seconds 5 --concurrency 32 --sockets 200
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time
from contextlib import contextmanager
from typing import Iterator

import aiohttp
import websockets

from bench.common import OPERATOR, bench_database, emit, free_port, percentile, raytenant_service, server_process
from serve_app.auth import Tokens


@contextmanager
def plain_uvicorn(database_url: str) -> Iterator[str]:
    """The same app under one uvicorn process joined to the running Ray cluster (same hub actors)."""
    import ray

    port = free_port()
    address = ray.get_runtime_context().gcs_address
    code = (
        "import ray, uvicorn;"
        "from serve_app.app import create_app;from serve_app.runtime import Runtime;from serve_app.settings import Settings;"
        f"ray.init(address='{address}', namespace='raytenant', log_to_driver=False);"
        f"app=create_app(Runtime(Settings(database_url='{database_url}', operator_token='{OPERATOR}', hub_shards=1)));"
        f"uvicorn.run(app, host='127.0.0.1', port={port}, log_level='warning')"
    )
    with server_process(["-c", code], port) as url:
        yield url


async def http_rate(base: str, seconds: float, concurrency: int) -> dict:
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def worker() -> None:
            nonlocal errors
            while time.monotonic() < deadline:
                started = time.perf_counter()
                try:
                    async with session.get(f"{base}/healthz") as response:
                        await response.read()
                        if response.status != 200:
                            errors += 1
                            continue
                except aiohttp.ClientError:
                    errors += 1
                    continue
                latencies.append((time.perf_counter() - started) * 1000)

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - started
    return {
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(percentile(latencies, 0.5) or 0, 2),
        "p99_ms": round(percentile(latencies, 0.99) or 0, 2),
        "errors": errors,
    }


async def ws_pings(base: str, sockets: int, rounds: int) -> dict:
    token = Tokens(OPERATOR).mint("bench-pings")[0]
    url = base.replace("http", "ws", 1) + f"/v1/ws?token={token}"
    conns = []
    for start in range(0, sockets, 50):
        conns += await asyncio.gather(*(websockets.connect(url, compression=None) for _ in range(start, min(sockets, start + 50))))
    for ws in conns:
        await ws.recv()  # connection_established
    latencies: list[float] = []

    async def ping(ws) -> None:
        for _ in range(rounds):
            started = time.perf_counter()
            await ws.send('{"type":"ping"}')
            reply = None
            while reply != "pong":  # skip anything else the server sends
                reply = json.loads(await asyncio.wait_for(ws.recv(), 30))["type"]
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.monotonic()
    await asyncio.gather(*(ping(ws) for ws in conns))
    elapsed = time.monotonic() - started
    for ws in conns:
        await ws.close()
    return {
        "sockets": sockets,
        "pings_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(percentile(latencies, 0.5) or 0, 2),
        "p99_ms": round(percentile(latencies, 0.99) or 0, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--sockets", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--database-url")
    args = parser.parse_args()
    results = {}

    def measure(path: str, base: str) -> None:
        http = asyncio.run(http_rate(base, args.seconds, args.concurrency))
        emit({"bench": "ingress_http", "path": path, "concurrency": args.concurrency, **http})
        ws = asyncio.run(ws_pings(base, args.sockets, args.rounds))
        emit({"bench": "ingress_ws", "path": path, **ws})
        results[path] = (http, ws)

    database = bench_database(args.database_url)
    with raytenant_service(database) as urls:
        with plain_uvicorn(database) as base:
            measure("plain_uvicorn", base)
        if len(urls) > 1:
            measure("serve_direct_ingress", urls[0])
        measure("serve_proxy", urls[-1])
    if "serve_direct_ingress" in results and "serve_proxy" in results:
        (dh, dw), (ph, pw) = results["serve_direct_ingress"], results["serve_proxy"]
        emit(
            {
                "bench": "ingress_ratio",
                "direct_vs_proxy_requests_per_s": round(dh["requests_per_s"] / max(1e-9, ph["requests_per_s"]), 2),
                "direct_vs_proxy_ws_p99": round(dw["p99_ms"] / max(1e-9, pw["p99_ms"]), 3),
            }
        )


if __name__ == "__main__":
    main()
