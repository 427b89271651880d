"""`raytenant loadtest`: load from Ray tasks spread over the cluster, so the load grows with it.

Each client worker is a Ray task (SPREAD over the nodes). It opens WebSocket connections for its
tenants (subscribed to all their flows) and drives HTTP at its share of the rate: usage records,
event publishes, recommendations and flows. Workers report per-second samples to a progress actor
the driver prints from; at the end each returns what it measured, and the driver writes a JSON
report (throughput, p50/p95/p99 per operation, errors, events lost and duplicated) and a PNG of
latency and throughput over time.

Bounded: at most MAX_SECONDS, MAX_CONNECTIONS sockets and MAX_RATE operations per second in all;
the target must be loopback unless --allow-remote says otherwise.
"""
from __future__ import annotations

import asyncio
import json
import math
import random
import time
import uuid
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlparse

import ray

MAX_SECONDS = 600
MAX_CONNECTIONS = 20_000
MAX_RATE = 20_000
OPERATIONS = ("usage", "publish", "recommend", "flow")
DEFAULT_MIX = {"usage": 0.4, "publish": 0.4, "recommend": 0.19, "flow": 0.01}
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
SAMPLE: dict[str, Any] = {}  # the flows' input, loaded in each worker


@dataclass
class LoadConfig:
    url: str = "http://127.0.0.1:8000"
    operator_token: str = ""
    workers: int = 2
    tenants: int = 8
    connections: int = 40  # in all, spread over the tenants
    rate: float = 100.0  # HTTP operations per second, in all
    duration: float = 30.0
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    allow_remote: bool = False
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def check(self) -> None:
        """Refuse what the load test must not do; raises ValueError with the reason."""
        host = urlparse(self.url).hostname or ""
        if host not in LOOPBACK and not self.allow_remote:
            raise ValueError(f"{host} is not loopback: pass --allow-remote to load another machine")
        if not 0 < self.duration <= MAX_SECONDS:
            raise ValueError(f"duration must be in (0, {MAX_SECONDS}] seconds")
        if not 0 <= self.connections <= MAX_CONNECTIONS:
            raise ValueError(f"connections must be in [0, {MAX_CONNECTIONS}]")
        if not 0 < self.rate <= MAX_RATE:
            raise ValueError(f"rate must be in (0, {MAX_RATE}] operations per second")
        if not 1 <= self.workers <= 256 or not 1 <= self.tenants <= 10_000:
            raise ValueError("workers must be in [1, 256] and tenants in [1, 10000]")
        if set(self.mix) - set(OPERATIONS) or not sum(self.mix.values()) > 0:
            raise ValueError(f"mix names operations of {OPERATIONS} with positive total weight")
        if not self.operator_token:
            raise ValueError("the operator token is needed to mint the tenants' tokens")


@ray.remote(num_cpus=0)
class Progress:
    """Where workers report per-second samples; the driver reads the totals while it waits."""

    def __init__(self) -> None:
        self.ops = 0
        self.errors = 0
        self.delivered = 0
        self.workers_done = 0

    def report(self, ops: int, errors: int, delivered: int) -> None:
        self.ops += ops
        self.errors += errors
        self.delivered += delivered

    def done(self) -> None:
        self.workers_done += 1

    def totals(self) -> dict[str, int]:
        return {"ops": self.ops, "errors": self.errors, "delivered": self.delivered, "workers_done": self.workers_done}


def _tokens(config: LoadConfig) -> dict[str, str]:
    from serve_app.auth import Tokens

    import os

    tokens = Tokens(config.operator_token, os.environ.get("RAYTENANT_JWT_SECRET", ""))
    return {f"lt-{config.run_id}-{i}": tokens.mint(f"lt-{config.run_id}-{i}", user="loadtest")[0]
            for i in range(config.tenants)}


@ray.remote(num_cpus=0.25, scheduling_strategy="SPREAD")
def client_worker(config: dict[str, Any], index: int, tokens: dict[str, str], progress: Any) -> dict[str, Any]:
    return asyncio.run(_work(LoadConfig(**config), index, tokens, progress))


async def _work(config: LoadConfig, index: int, tokens: dict[str, str], progress: Any) -> dict[str, Any]:
    from crews.samples import sample_inventory
    from serve_app.client import AsyncClient, RaytenantError, async_pool

    global SAMPLE
    SAMPLE = sample_inventory()

    mine = [t for i, t in enumerate(sorted(tokens)) if i % config.workers == index] or sorted(tokens)[:1]
    sockets = config.connections // config.workers + (1 if index < config.connections % config.workers else 0)
    rate = config.rate / config.workers
    samples: list[tuple[float, str, float, bool]] = []  # (time, operation, latency ms, ok)
    published: dict[str, set[int]] = defaultdict(set)
    received: list[tuple[str, list[int]]] = []
    stop = asyncio.Event()
    started = time.time()
    opened = failed = 0
    # one connection pool for the worker, one client (token) per tenant
    http = async_pool(connections=None)
    clients = {tenant: AsyncClient(config.url, tokens[tenant], http=http) for tenant in mine}

    async def listen(tenant: str) -> None:
        nonlocal failed
        seqs: list[int] = []
        received.append((tenant, seqs))

        def connected(_message: dict[str, Any]) -> None:
            nonlocal opened
            opened += 1

        try:
            async for event in clients[tenant].stream(flow_id="*", max_retries=0, connected=connected):
                if event.get("type") == "flow_update" and event.get("flow_id") == "loadtest":
                    seqs.append(event["seq"])
        except RaytenantError:
            failed += 1

    async def call(operation: str, tenant: str, n: int) -> Any:
        rt = clients[tenant]
        if operation == "usage":
            return await rt.costs.record({"model": "gpt-4o-mini", "input_tokens": random.randint(100, 2000),
                                          "output_tokens": random.randint(10, 500), "agent": "loadtest",
                                          "idempotency_key": f"lt-{config.run_id}-{index}-{n}"})
        if operation == "publish":
            return await rt.events.publish({"type": "flow_update", "flow_id": "loadtest", "data": {"n": n}})
        if operation == "recommend":
            return await rt.learning.recommend({"field": random.choice(
                ["cust_nm", "customer_name", "hostname", "email_addr", "order_total"])})
        return await rt.flows.create("loadtest", SAMPLE["data"], kind=random.choice(["discovery", "optimization"]),
                                     target_schema=SAMPLE["target_schema"])

    async def drive() -> None:
        operations = [op for op in OPERATIONS if config.mix.get(op)]
        weights = [config.mix[op] for op in operations]
        pending: set[asyncio.Task] = set()
        n = 0
        next_at = time.monotonic()
        deadline = next_at + config.duration
        while time.monotonic() < deadline:
            n += 1
            tenant = mine[n % len(mine)]
            operation = random.choices(operations, weights)[0]
            task = asyncio.create_task(one(operation, tenant, n))
            pending.add(task)
            task.add_done_callback(pending.discard)
            next_at += 1 / rate
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        if pending:
            await asyncio.wait(pending, timeout=30)

    async def one(operation: str, tenant: str, n: int) -> None:
        began = time.perf_counter()
        try:
            answer = await call(operation, tenant, n)
            ok = True
            if operation == "publish":
                published[tenant].update(answer["seqs"])
        except RaytenantError as error:
            ok = operation == "flow" and error.status == 429  # a full flow queue is the limit working
        except ValueError:
            ok = False
        samples.append((time.time(), operation, (time.perf_counter() - began) * 1000, ok))

    async def report() -> None:
        sent = delivered = 0
        while not stop.is_set():
            await asyncio.sleep(1)
            new = samples[sent:]
            sent += len(new)
            now = sum(len(seqs) for _, seqs in received)
            progress.report.remote(len(new), sum(1 for s in new if not s[3]), now - delivered)
            delivered = now

    async with http:
        listeners = [asyncio.create_task(listen(mine[i % len(mine)])) for i in range(sockets)]
        reporter = asyncio.create_task(report())
        await asyncio.sleep(1.0)  # sockets subscribed before the first publish
        await drive()
        await asyncio.sleep(2.0)  # the last events reach the sockets
        stop.set()
        for listener in listeners:
            listener.cancel()
        await asyncio.gather(*listeners, reporter, return_exceptions=True)
    progress.done.remote()
    lost = duplicated = 0
    for tenant, seqs in received:
        lost += len(published[tenant] - set(seqs))
        duplicated += len(seqs) - len(set(seqs))
    return {"worker": index, "node": ray.get_runtime_context().get_node_id(), "started": started, "samples": samples,
            "published": sum(len(s) for s in published.values()), "delivered": sum(len(s) for _, s in received),
            "lost": lost, "duplicated": duplicated, "sockets_opened": opened, "sockets_failed": failed}


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))], 2)


def build_report(config: LoadConfig, results: list[dict[str, Any]], elapsed: float) -> dict[str, Any]:
    samples = [s for r in results for s in r["samples"]]
    start = min((s[0] for s in samples), default=time.time())
    operations: dict[str, Any] = {}
    for op in OPERATIONS:
        mine = [s for s in samples if s[1] == op]
        if not mine:
            continue
        latencies = [s[2] for s in mine if s[3]]
        operations[op] = {"count": len(mine), "errors": sum(1 for s in mine if not s[3]),
                          "throughput_per_s": round(len(mine) / elapsed, 1), "p50_ms": percentile(latencies, 50),
                          "p95_ms": percentile(latencies, 95), "p99_ms": percentile(latencies, 99)}
    seconds: dict[int, list[tuple]] = defaultdict(list)
    for s in samples:
        seconds[int(s[0] - start)].append(s)
    timeline = [{"second": t, "ops": len(b), "errors": sum(1 for s in b if not s[3]),
                 "p50_ms": percentile([s[2] for s in b if s[3]], 50), "p99_ms": percentile([s[2] for s in b if s[3]], 99)}
                for t, b in sorted(seconds.items())]
    safe = {k: v for k, v in asdict(config).items() if k != "operator_token"}
    return {
        "config": safe, "seconds": round(elapsed, 1), "workers": len(results),
        "nodes": sorted({r["node"] for r in results}), "operations": operations,
        "total_ops": len(samples), "total_errors": sum(1 for s in samples if not s[3]),
        "throughput_per_s": round(len(samples) / elapsed, 1),
        "events": {"published": sum(r["published"] for r in results), "delivered": sum(r["delivered"] for r in results),
                   "lost": sum(r["lost"] for r in results), "duplicated": sum(r["duplicated"] for r in results)},
        "sockets": {"opened": sum(r["sockets_opened"] for r in results),
                    "failed": sum(r["sockets_failed"] for r in results)},
        "timeline": timeline,
    }


def plot(report: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timeline = report["timeline"]
    seconds = [t["second"] for t in timeline]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    top.plot(seconds, [t["p50_ms"] for t in timeline], label="p50")
    top.plot(seconds, [t["p99_ms"] for t in timeline], label="p99")
    top.set_ylabel("latency (ms)")
    top.legend()
    top.set_title(f"raytenant loadtest: {report['workers']} workers on {len(report['nodes'])} node(s)")
    bottom.plot(seconds, [t["ops"] for t in timeline], label="operations/s")
    bottom.plot(seconds, [t["errors"] for t in timeline], label="errors/s")
    bottom.set_xlabel("second")
    bottom.set_ylabel("per second")
    bottom.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def run(config: LoadConfig, out: str, png: str | None, *, show: Any = print) -> dict[str, Any]:
    """Run the load test on the connected Ray cluster; writes the report (and plot) and returns it."""
    config.check()
    tokens = _tokens(config)
    progress = Progress.remote()
    began = time.monotonic()
    futures = [client_worker.remote(asdict(config), i, tokens, progress) for i in range(config.workers)]
    waiting = list(futures)
    while waiting:
        _, waiting = ray.wait(waiting, num_returns=len(waiting), timeout=2.0)
        totals = ray.get(progress.totals.remote())
        show(f"[{time.monotonic() - began:5.0f}s] ops {totals['ops']:>8}  errors {totals['errors']:>6}  "
             f"events delivered {totals['delivered']:>8}  workers done {totals['workers_done']}/{config.workers}")
    results = ray.get(futures)
    report = build_report(config, results, config.duration)
    with open(out, "w") as handle:
        json.dump(report, handle, indent=1)
    if png:
        plot(report, png)
    ray.kill(progress)
    return report
