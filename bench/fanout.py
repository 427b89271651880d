"""Fan-out benchmark: C WebSocket connections over T tenants, events published over HTTP at a fixed
offered rate, publish-to-receive latency, lost and duplicated counts.

Runs, in one process and one run, the shipped path (Ray Serve direct ingress -> EventHub actors ->
database), the same deployment through the Serve proxy, and the single-process uvicorn broadcaster
the project replaces (bench/baseline_broadcaster.py); prints one JSON line per run and the p99
ratio against the baseline at each connection count.

    python -m bench.fanout                     # 100 and 1000 connections at 500 events/s
    python -m bench.fanout --connections 1000 --rate 500 --duration 10 --paths direct,baseline

Targets only loopback; every loop is bounded by --duration and a drain timeout.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import time
import uuid
from collections import defaultdict

import websockets

from bench.common import (
    baseline_server,
    bench_database,
    client_heap_frozen,
    emit,
    percentile,
    raytenant_service,
    tenant_clients,
)
from serve_app.client import AsyncClient, RaytenantError

STREAM = {"flow_update"}


class Subscriber:
    """One socket, read frame by frame: the bench audits the wire (a seq sent twice or out of
    order counts), which the typed client's stream() would hide, since it delivers each seq once."""

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        self.seqs: list[int] = []
        self.latencies: list[float] = []
        self.last_at = 0.0
        self.open = True

    async def run(self, ws) -> None:
        # a close (the server dropped it, or the bench closed it at the end) ends the reading
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in ws:
                now = time.time()
                message = json.loads(raw)
                if message.get("type") in STREAM:
                    self.seqs.append(message["seq"])
                    self.latencies.append((now - message["data"]["sent_at"]) * 1000)
                    self.last_at = now
        self.open = False


async def open_sockets(ws_url: str, clients: dict[str, AsyncClient], count: int) -> tuple[list, list, list]:
    """`count` subscribers to flow `f`, spread over the tenants of `clients` (their tokens), opened
    50 at a time, each attached (its connection_established) before the next batch."""
    tenants = list(clients)
    subs, sockets, readers = [], [], []
    for start in range(0, count, 50):
        chunk = range(start, min(count, start + 50))
        opened = await asyncio.gather(*(
            websockets.connect(f"{ws_url}?flow_id=f", max_queue=None, compression=None, open_timeout=60,
                               ping_interval=None,  # as a browser: it answers the server's pings, sends none
                               additional_headers={"Authorization": f"Bearer {clients[tenants[i % len(tenants)]].token}"})
            for i in chunk))
        for i, ws in zip(chunk, opened):
            first = json.loads(await asyncio.wait_for(ws.recv(), 60))
            assert first["type"] == "connection_established", first
            sub = Subscriber(tenants[i % len(tenants)])
            subs.append(sub)
            sockets.append(ws)
            readers.append(asyncio.create_task(sub.run(ws)))
    return subs, sockets, readers


async def run_fanout(label: str, base_url: str, connections: int, tenant_count: int, rate: int, duration: float) -> dict:
    run_id = uuid.uuid4().hex[:6]
    tenants = [f"bench-{run_id}-{i}" for i in range(tenant_count)]
    async with tenant_clients(base_url, tenants, connections=500) as clients:
        return await fan_out(label, clients, connections, rate, duration)


async def fan_out(label: str, clients: dict[str, AsyncClient], connections: int, rate: int, duration: float) -> dict:
    tenants = list(clients)
    tenant_count = len(tenants)
    ws_url = str(next(iter(clients.values())).url).replace("http", "ws", 1) + "/v1/ws"
    subs, sockets, readers = await open_sockets(ws_url, clients, connections)
    with client_heap_frozen():  # the bench's own GC pauses are not the service's latency
        await asyncio.sleep(1.0)  # let subscriptions settle (the proxy path confirms late)
        published: dict[str, list[int]] = defaultdict(list)
        errors = 0
        post_ms: list[float] = []
        total = int(rate * duration)

        async def post(k: int) -> None:
            nonlocal errors
            tenant = tenants[k % tenant_count]
            sent = time.time()
            try:
                answer = await clients[tenant].events.publish({"type": "flow_update", "flow_id": "f",
                                                               "data": {"sent_at": sent, "k": k}})
            except RaytenantError:
                errors += 1
                return
            published[tenant] += answer["seqs"]
            post_ms.append((time.time() - sent) * 1000)

        started = time.time()
        tasks = []
        for k in range(total):  # fixed offered rate: each publish starts on schedule
            delay = started + k / rate - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(post(k)))
        await asyncio.gather(*tasks)

        expected = sum(len(published[s.tenant]) for s in subs)
        deadline = time.time() + 15
        while time.time() < deadline and sum(len(s.seqs) for s in subs) < expected:
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # catch duplicates that would arrive late
    for ws in sockets:
        await ws.close()
    await asyncio.gather(*readers, return_exceptions=True)

    lost = dup = delivered = 0
    latencies: list[float] = []
    for sub in subs:
        got = set(sub.seqs)
        lost += len(set(published[sub.tenant]) - got)
        dup += len(sub.seqs) - len(got)
        delivered += len(sub.seqs)
        latencies += sub.latencies
    finished = max((s.last_at for s in subs), default=time.time())
    return {
        "bench": "fanout",
        "path": label,
        "connections": connections,
        "tenants": tenant_count,
        "offered_events_per_s": rate,
        "published": sum(len(v) for v in published.values()),
        "publish_errors": errors,
        "delivered": delivered,
        "delivered_per_s": round(delivered / max(1e-9, finished - started), 1),
        "p50_ms": round(percentile(latencies, 0.50) or 0, 2),
        "p99_ms": round(percentile(latencies, 0.99) or 0, 2),
        "lost": lost,
        "duplicated": dup,
        "publish_p50_ms": round(percentile(post_ms, 0.50) or 0, 2),
        "publish_p99_ms": round(percentile(post_ms, 0.99) or 0, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", default="100,1000")
    parser.add_argument("--tenants-per-10", type=int, default=1, help="tenants = connections / 10 * this")
    parser.add_argument("--rate", type=int, default=500, help="events/s offered")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of publishing per run")
    parser.add_argument("--repeats", type=int, default=3, help="alternating baseline/direct runs per count")
    parser.add_argument("--paths", default="baseline,direct,proxy")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds per path first")
    parser.add_argument("--database-url")
    args = parser.parse_args()
    counts = [int(c) for c in args.connections.split(",")]
    paths = args.paths.split(",")
    runs: dict[tuple[str, int], list[dict]] = defaultdict(list)

    def run(label: str, url: str, c: int) -> None:
        tenants = max(1, c // 10 * args.tenants_per_10)
        result = asyncio.run(run_fanout(label, url, c, tenants, args.rate, args.duration))
        runs[(label, c)].append(result)
        emit(result)

    def warm(url: str) -> None:
        """Connections, statements and caches warm up before anything is measured."""
        if args.warmup > 0:
            asyncio.run(run_fanout("warmup", url, 50, 5, args.rate, args.warmup))

    # Both services run side by side for the whole bench, and their runs alternate, so the baseline
    # and the shipped path see the same machine (Ray's background processes included).
    database = bench_database(args.database_url)
    with raytenant_service(database) as urls, baseline_server() as baseline_url:
        targets = {"baseline": baseline_url, "direct": urls[0] if len(urls) > 1 else None, "proxy": urls[-1]}
        alternating = [p for p in ("baseline", "direct") if p in paths and targets[p]]
        for label in alternating:
            warm(targets[label])
        for c in counts:
            for _ in range(args.repeats):
                for label in alternating:
                    run(label, targets[label], c)
        if "proxy" in paths:  # last: the proxy falls seconds behind at this rate
            warm(targets["proxy"])
            for c in counts:
                run("proxy", targets["proxy"], c)

    for c in counts:
        base = runs.get(("baseline", c))
        for label in ("direct", "proxy"):
            mine = runs.get((label, c))
            if not (base and mine):
                continue
            base_p99 = statistics.median(r["p99_ms"] for r in base)
            mine_p99 = statistics.median(r["p99_ms"] for r in mine)
            emit(
                {
                    "bench": "fanout_ratio",
                    "path": label,
                    "connections": c,
                    "offered_events_per_s": args.rate,
                    "runs": len(mine),
                    "median_p99_ms": mine_p99,
                    "baseline_median_p99_ms": base_p99,
                    "p99_ratio_vs_baseline": round(mine_p99 / base_p99, 2) if base_p99 else None,
                    "delivered_ratio_vs_baseline": round(
                        statistics.median(r["delivered_per_s"] for r in mine)
                        / max(1e-9, statistics.median(r["delivered_per_s"] for r in base)),
                        2,
                    ),
                    "target_p99_ratio": 1.5,
                    "lost": sum(r["lost"] for r in mine),
                    "duplicated": sum(r["duplicated"] for r in mine),
                }
            )


if __name__ == "__main__":
    main()
