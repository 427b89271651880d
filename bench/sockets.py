"""Sockets per replica: how many WebSocket connections one ingress replica holds, at what memory
and delivery latency (issue 18 part 1).

For each count C (1,000, 5,000 and 10,000 by default), on a fresh deployment with one direct-ingress
replica: C sockets over C/10 tenants, each subscribed to its tenant's flow `f` and read frame by frame
(bench.fanout's subscribers: a dropped socket stays dropped and its events count as lost), held
for --hold seconds while --rate events/s are published over HTTP to random tenants, open-loop.
Each event reaches its tenant's ten sockets. One JSON line per count:

    bench, connections, held (still open at the end), rss_mb_per_1k (the replica's resident
    memory with the sockets open minus before they opened, per 1,000 sockets), p50_ms, p99_ms
    (publish to receive), lost, duplicated, plus what the run needed to read them.

Targets at 10,000: held 10,000, lost 0, p99_ms under 250.

The bench holds the client end of every socket in this one process, so it acts as a browser fleet
would: its sockets send no keepalive pings (they answer the server's) and its garbage collector is
off while they are held (`bench.common.client_heap_frozen`): with it on, its own full collections
paused every socket for up to 1.1 s and were the whole p99 measured.

Each socket is a file descriptor in this process and in the replica: the bench raises its soft
open-file limit to the hard one before Ray starts, so the replica inherits it (the count needs
C + ~1,000 descriptors in both; `ulimit -Hn` bounds it, 20,000 on this machine). The baseline for
the machine is printed first: the same sockets and rate against the single-process broadcaster
(bench/baseline_broadcaster.py), so each run can be read on its own.

    python -m bench.sockets                                 # 1k, 5k, 10k; ~8 minutes
    python -m bench.sockets --connections 1000 --hold 10    # a quick look
"""
from __future__ import annotations

import argparse
import asyncio
import random
import resource
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.common import baseline_server, bench_database, client_heap_frozen, emit, percentile, raytenant_service, tenant_clients
from bench.fanout import open_sockets
from serve_app.client import RaytenantError

def raise_open_files() -> int:
    """The soft open-file limit raised to the hard one (inherited by Ray started afterwards)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def replica_rss_mb() -> float | None:
    """The ingress replica's resident memory (Linux /proc), found through Serve's details."""
    from ray.serve.context import _get_global_client

    from serve_app.deployment import APP_NAME, DEPLOYMENT_NAME

    details = _get_global_client().get_serve_details()
    replicas = details["applications"][APP_NAME]["deployments"][DEPLOYMENT_NAME]["replicas"]
    pids = [r["pid"] for r in replicas if r.get("state") == "RUNNING" and r.get("pid")]
    if len(pids) != 1:
        return None
    for line in Path(f"/proc/{pids[0]}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


async def hold(url: str, connections: int, rate: float, seconds: float, rss: Any) -> dict[str, Any]:
    tenants = [f"sk-{uuid.uuid4().hex[:6]}-{i}" for i in range(max(1, connections // 10))]
    before = rss()
    async with tenant_clients(url, tenants, connections=200) as clients:
        opening = time.monotonic()
        subs, sockets, readers = await open_sockets(url.replace("http", "ws", 1) + "/v1/ws", clients, connections)
        opened_s = time.monotonic() - opening
        with client_heap_frozen():  # the bench's own GC pauses are not the service's latency
            await asyncio.sleep(2.0)  # the last subscriptions settle
            during = rss()
            published: dict[str, list[int]] = defaultdict(list)
            errors = 0
            rng = random.Random(7)

            async def publish(k: int) -> None:
                nonlocal errors
                tenant = rng.choice(tenants)
                try:
                    answer = await clients[tenant].events.publish({"type": "flow_update", "flow_id": "f",
                                                                   "data": {"sent_at": time.time(), "k": k}})
                except RaytenantError:
                    errors += 1
                    return
                published[tenant] += answer["seqs"]

            started, tasks = time.monotonic(), []
            for k in range(int(rate * seconds)):  # open loop: each publish starts on schedule
                delay = started + k / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(publish(k)))
            await asyncio.gather(*tasks)
            expected = sum(len(published[s.tenant]) for s in subs if s.open)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and sum(len(s.seqs) for s in subs) < expected:
                await asyncio.sleep(0.2)
            await asyncio.sleep(0.5)  # late duplicates
            held = sum(s.open for s in subs)
        for ws in sockets:
            await ws.close()
        await asyncio.gather(*readers, return_exceptions=True)
    lost = sum(len(set(published[s.tenant]) - set(s.seqs)) for s in subs)
    duplicated = sum(len(s.seqs) - len(set(s.seqs)) for s in subs)
    latencies = [x for s in subs for x in s.latencies]
    return {
        "connections": connections, "tenants": len(tenants), "held": held, "open_seconds": round(opened_s, 1),
        "rss_mb_before": round(before, 1) if before is not None else None,
        "rss_mb_held": round(during, 1) if during is not None else None,
        "rss_mb_per_1k": round((during - before) / (connections / 1000), 1) if before and during else None,
        "events_per_s": rate, "hold_s": seconds, "published": sum(len(v) for v in published.values()),
        "publish_errors": errors, "delivered": len(latencies),
        "p50_ms": round(percentile(latencies, 0.5) or 0, 2), "p99_ms": round(percentile(latencies, 0.99) or 0, 2),
        "lost": lost, "duplicated": duplicated,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", default="1000,5000,10000")
    parser.add_argument("--rate", type=float, default=200.0, help="events/s published over the run")
    parser.add_argument("--hold", type=float, default=60.0, help="seconds the sockets are held, publishing")
    parser.add_argument("--baseline", default="1000", help="counts also run against the broadcaster ('' for none)")
    parser.add_argument("--database-url")
    args = parser.parse_args()
    limit = raise_open_files()
    counts = [int(c) for c in args.connections.split(",")]
    if max(counts) + 1000 > limit:
        raise SystemExit(f"{max(counts)} sockets need about {max(counts) + 1000} open files; the hard limit is {limit}")
    for c in [int(c) for c in args.baseline.split(",") if c]:
        with baseline_server() as url:
            emit({"bench": "sockets", "path": "baseline", **asyncio.run(hold(url, c, args.rate, args.hold,
                                                                             lambda: None))})
    database = bench_database(args.database_url)
    for c in counts:  # a fresh replica per count: its memory before is a clean start
        with raytenant_service(database) as urls:
            emit({"bench": "sockets", "path": "direct", "open_files_limit": limit,
                  **asyncio.run(hold(urls[0], c, args.rate, args.hold, replica_rss_mb))})


if __name__ == "__main__":
    main()
