"""A bounded chaos soak: mixed load while faults are injected at random, then the invariants.

    python -m bench.chaos [--duration 600] [--database-url URL] [--seed N]

A Ray cluster on this machine (a head and two workers, `ray.cluster_utils.Cluster`), Serve with
two direct-ingress replicas and the balancer in front (serve_app/cli/balancer.py), PostgreSQL. The
load goes through the balancer: tenants publish events, record usage, reserve and settle LLM calls
against an operator cap small enough to run out, send agent messages and start flows, while
WebSocket clients listen and resume. A scheduler injects one fault every few seconds, the kinds
in a shuffled rotation so a short run sees each:

- `shard_kill`: a random shard actor killed (Ray restarts it);
- `replica_kill`: a random ingress replica killed (Serve replaces it);
- `node_cycle`: a worker node removed and a new one added;
- `db_restart`: PostgreSQL stopped for 3 s and started again (always, in a finally block).

At the end it waits for the flows, then checks from the database and from what the clients were
acknowledged: every acknowledged event is replayable through the API, in order, once; every
acknowledged usage record and settle is counted once; no tenant spent past its cap; no
acknowledged message is lost; every flow ended completed, failed with a reason, or cancelled.
Prints one JSON line: `bench: "chaos"`, `duration_s`, `faults` (count by kind), `acknowledged`,
`lost`, `duplicated`, `overspend_usd`, `stuck_flows`, `p99_ms_outside_faults`, and details.
Loopback only, bounded by --duration (at most 3,600 s).
"""
from __future__ import annotations

import os

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before Ray is imported: addresses stay on loopback
for _name, _value in (("CREWAI_DISABLE_TELEMETRY", "true"), ("OTEL_SDK_DISABLED", "true"),
                      ("CREWAI_TRACING_ENABLED", "false"), ("CREWAI_DISABLE_VERSION_CHECK", "true")):
    os.environ.setdefault(_name, _value)

from serve_app.cli.launcher import configure_environment, metrics_enabled  # noqa: E402

configure_environment()

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections import Counter  # noqa: E402
from typing import Any, Awaitable  # noqa: E402

import ray  # noqa: E402
from ray import serve  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from bench.common import ResumingListener, bench_database, free_port, percentile, postgres  # noqa: E402
from crews.samples import sample_inventory  # noqa: E402
from serve_app.auth import Tokens  # noqa: E402
from serve_app.client import AsyncClient, RaytenantError, async_pool  # noqa: E402
from serve_app.cli.balancer import Balancer, serve_targets  # noqa: E402
from serve_app.deployment import APP_NAME  # noqa: E402
from serve_app.cli.launcher import deploy  # noqa: E402
from storage.engine import create_engine  # noqa: E402
from storage.migrate import upgrade  # noqa: E402
from storage.models import EventRow, FlowRow, MessageRow, UsageRow  # noqa: E402

MAX_DURATION = 3600
OPERATOR = "chaos-bench"
PREFIX = "chaos-"
TENANTS = 3
SOCKETS_PER_TENANT = 2
RATE = 8  # load rounds per second; each round sends four requests and may start a flow
CAP_USD = 0.05  # each tenant's monthly cap: the reservations exhaust it within a minute
MODEL = "gpt-4o-mini"
FAULT_KINDS = ("shard_kill", "replica_kill", "node_cycle", "db_restart")
RECOVERY_S = 5.0  # after a fault, requests count as "during faults" for this long


class Soak:
    def __init__(self, url: str, tokens: dict[str, str], operator: str, rng: random.Random) -> None:
        self.url, self.tokens, self.operator, self.rng = url, tokens, operator, rng
        self.stop = asyncio.Event()
        self.requests: list[tuple[float, float, str, bool]] = []  # start, end, kind, acknowledged
        self.events: set[tuple[str, int]] = set()
        self.usage: set[tuple[str, str]] = set()
        self.settled: set[tuple[str, str]] = set()  # (tenant, reservation id) settled and acknowledged
        self.messages: set[str] = set()
        self.flows: set[tuple[str, str]] = set()
        self.refused: Counter[str] = Counter()

    async def _call(self, kind: str, call: Awaitable[Any]) -> Any | None:
        """The answer of a typed client call, or None when it failed (counted by its code)."""
        started = time.monotonic()
        try:
            answer = await call
        except RaytenantError as error:
            self.requests.append((started, time.monotonic(), kind, False))
            self.refused[f"{kind}:{error.status if error.code == 'http_error' else error.code}"] += 1
            return None
        self.requests.append((started, time.monotonic(), kind, True))
        return answer

    async def round(self, rt: AsyncClient, tenant: str, n: int, sample: dict[str, Any]) -> None:
        published = await self._call("publish", rt.events.publish({"type": "flow_update", "flow_id": "f",
                                                                    "data": {"n": n}}))
        if published is not None:
            self.events.update((tenant, seq) for seq in published["seqs"])
        key = f"u-{n}"
        if await self._call("usage", rt.costs.record({"model": MODEL, "input_tokens": 50, "output_tokens": 10,
                                                      "idempotency_key": key})) is not None:
            self.usage.add((tenant, key))
        held = await self._call("reserve", rt.costs.reserve(MODEL, 1000, 400))
        if held is not None:
            reservation = held["reservation_id"]
            if await self._call("settle", rt.costs.settle(reservation, 900, 300)) is not None:
                self.settled.add((tenant, reservation))
        sent = await self._call("message", rt.agents.send("mapper", "validator", {"n": n}))
        if sent is not None:
            self.messages.update(sent["message_ids"])
        if n % (RATE * 10) == 0:  # a flow every ten seconds
            started = await self._call("flow", rt.flows.create("chaos", sample["data"],
                                                               target_schema=sample["target_schema"]))
            if started is not None:
                self.flows.add((tenant, started["flow_id"]))

    async def load(self) -> None:
        sample = sample_inventory()
        pending: set[asyncio.Task] = set()
        async with async_pool() as http:
            clients = {tenant: AsyncClient(self.url, token, timeout=10, http=http) for tenant, token in self.tokens.items()}
            tenants = list(clients)
            n = 0
            while not self.stop.is_set():
                n += 1
                started = time.monotonic()
                tenant = tenants[n % len(tenants)]
                task = asyncio.create_task(self.round(clients[tenant], tenant, n, sample))
                pending.add(task)
                task.add_done_callback(pending.discard)
                await asyncio.sleep(max(0.0, 1 / RATE - (time.monotonic() - started)))
            await asyncio.gather(*pending)


class Faults:
    def __init__(self, cluster: Cluster, workers: list[Any], rng: random.Random) -> None:
        self.cluster, self.workers, self.rng = cluster, workers, rng
        self.windows: list[tuple[float, float, str]] = []
        self.count: Counter[str] = Counter()
        self._rotation: list[str] = []

    def next_kind(self) -> str:
        if not self._rotation:
            self._rotation = list(FAULT_KINDS)
            self.rng.shuffle(self._rotation)
        return self._rotation.pop()

    async def inject(self, kind: str) -> None:
        started = time.monotonic()
        try:
            await getattr(self, kind)()
        finally:
            self.windows.append((started, time.monotonic(), kind))
            self.count[kind] += 1

    async def shard_kill(self) -> None:
        names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                 if a["namespace"] == "raytenant" and a["name"].startswith(PREFIX)]
        name = self.rng.choice(sorted(names))
        ray.kill(ray.get_actor(name, namespace="raytenant"), no_restart=False)

    async def replica_kill(self) -> None:
        replicas = [a for a in ray.util.list_named_actors(all_namespaces=True)
                    if a["name"].startswith(f"SERVE_REPLICA::{APP_NAME}#")]
        chosen = self.rng.choice(sorted(replicas, key=lambda a: a["name"]))
        ray.kill(ray.get_actor(chosen["name"], namespace=chosen["namespace"]), no_restart=True)

    async def node_cycle(self) -> None:
        doomed = self.workers.pop()
        await asyncio.to_thread(self.cluster.remove_node, doomed, True)
        await asyncio.sleep(2)
        self.workers.insert(0, self.cluster.add_node(num_cpus=1))  # the main thread: it installs signal handlers

    async def db_restart(self) -> None:
        await asyncio.to_thread(postgres, "stop")
        try:
            await asyncio.sleep(3)
        finally:
            await asyncio.to_thread(postgres, "start")

    def during(self, at: float) -> bool:
        return any(start - 0.5 <= at <= end + RECOVERY_S for start, end, _ in self.windows)

    async def run(self, stop: asyncio.Event, until: float) -> None:
        while time.monotonic() < until - 8:
            await asyncio.sleep(self.rng.uniform(6, 10))
            if time.monotonic() >= until - 8 or stop.is_set():
                return
            await self.inject(self.next_kind())


async def replay(rt: AsyncClient) -> list[int]:
    """Every seq of the tenant's stream through the API, page by page (retried while recovering)."""
    seqs: list[int] = []
    after = 0
    while True:
        for attempt in range(30):
            try:
                page = await rt.events.replay(after, limit=1000)
                break
            except RaytenantError:
                if attempt == 29:
                    raise
                await asyncio.sleep(1)
        seqs += [event["seq"] for event in page["events"] if event["type"] == "flow_update"]
        after = page["next_after"]
        if not page["has_more"]:
            return seqs


async def flows_ended(clients: dict[str, AsyncClient], flows: set[tuple[str, str]], timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    found = []
    for tenant, flow_id in sorted(flows):
        while True:
            try:
                flow = await clients[tenant].flows.get(flow_id)
            except RaytenantError:
                flow = {}
            if flow.get("status") in ("completed", "failed", "cancelled") or time.monotonic() > deadline:
                break
            await asyncio.sleep(1)
        found.append({"flow_id": flow_id, "status": flow.get("status"), "error": flow.get("error")})
    return found


async def soak(database_url: str, cluster: Cluster, workers: list[Any], duration: float, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    http_port = free_port()
    settings = {"database_url": database_url, "operator_token": OPERATOR, "actor_prefix": PREFIX, "llm_latency": 0.05}
    await asyncio.to_thread(deploy, settings, host="127.0.0.1", port=http_port, num_replicas=2)
    targets = serve_targets("127.0.0.1", http_port)
    deadline = time.monotonic() + 120
    while len(await targets()) < 2:
        if time.monotonic() > deadline:
            raise RuntimeError("the ingress replicas did not start")
        await asyncio.sleep(0.5)
    balancer = Balancer(targets, refresh=0.5)
    await balancer.start()
    minting = Tokens(OPERATOR)
    tokens = {f"{PREFIX}{uuid.uuid4().hex[:8]}-{i}": "" for i in range(TENANTS)}
    tokens = {tenant: minting.mint(tenant)[0] for tenant in tokens}
    async with AsyncClient(balancer.url, operator_token=OPERATOR, timeout=30) as operator:
        for tenant in tokens:
            await operator.admin.set_cap(tenant, CAP_USD)
    listeners = [ResumingListener(balancer.url.replace("http", "ws", 1) + "/v1/ws", token)
                 for token in tokens.values() for _ in range(SOCKETS_PER_TENANT)]
    listening = [asyncio.create_task(listener.run()) for listener in listeners]
    load = Soak(balancer.url, tokens, OPERATOR, rng)
    faults = Faults(cluster, workers, rng)
    started = time.monotonic()
    loading = asyncio.create_task(load.load())
    try:
        await faults.run(load.stop, started + duration)
        await asyncio.sleep(max(0.0, started + duration - time.monotonic()))
    finally:
        load.stop.set()
        await loading
        postgres("start")  # whatever happened, the database is up again
    elapsed = time.monotonic() - started
    async with async_pool() as http:
        clients = {tenant: AsyncClient(balancer.url, token, timeout=30, http=http) for tenant, token in tokens.items()}
        ended = await flows_ended(clients, load.flows, timeout=180)
        replayed = {tenant: await replay(rt) for tenant, rt in clients.items()}
    await asyncio.sleep(2)
    for listener in listeners:
        listener.stop.set()
    await asyncio.gather(*listening)
    await balancer.close()

    engine = create_engine(database_url)
    async with engine.connect() as conn:
        usage_rows = [(r.tenant, r.idempotency_key, r.reservation_id) for r in await conn.execute(
            select(UsageRow.tenant, UsageRow.idempotency_key, UsageRow.reservation_id)
            .where(UsageRow.tenant.in_(list(tokens))))]
        spent = {t: int(n or 0) for t, n in await conn.execute(
            select(UsageRow.tenant, func.sum(UsageRow.cost_nanos)).where(UsageRow.tenant.in_(list(tokens)))
            .group_by(UsageRow.tenant))}
        messages = set((await conn.execute(select(MessageRow.id).where(MessageRow.tenant.in_(list(tokens))))).scalars())
        stored_flows = {r.id: (r.status, r.error) for r in await conn.execute(
            select(FlowRow.id, FlowRow.status, FlowRow.error).where(FlowRow.tenant.in_(list(tokens))))}
        stored_events = {(r.tenant, r.seq) for r in await conn.execute(
            select(EventRow.tenant, EventRow.seq).where(EventRow.tenant.in_(list(tokens)), EventRow.type == "flow_update"))}
    await engine.dispose()
    serve.delete(APP_NAME)

    keys = Counter((t, k) for t, k, _ in usage_rows if k)
    settles = Counter((t, r) for t, _, r in usage_rows if r)
    replay_lost = sum(1 for t, s in load.events if s not in set(replayed[t]))
    replay_dup = sum(len(seqs) - len(set(seqs)) for seqs in replayed.values())
    replay_disorder = sum(1 for seqs in replayed.values() for a, b in zip(seqs, seqs[1:]) if b <= a)
    lost = {
        "events": replay_lost + len(load.events - stored_events),
        "usage": sum(1 for key in load.usage if keys[key] == 0),
        "settles": sum(1 for key in load.settled if settles[key] == 0),
        "messages": len(load.messages - messages),
    }
    duplicated = {
        "events": replay_dup + replay_disorder,
        "usage": sum(n - 1 for n in keys.values() if n > 1),
        "settles": sum(n - 1 for n in settles.values() if n > 1),
    }
    stuck = [f for f in ended if not (f["status"] in ("completed", "cancelled") or (f["status"] == "failed" and f["error"]))]
    outside = [(end - start) * 1000 for start, end, _, ok in load.requests if ok and not faults.during(start)]
    socket_gaps = socket_dups = 0
    for listener, (tenant, _) in zip(listeners, [(t, i) for t in tokens for i in range(SOCKETS_PER_TENANT)]):
        first = listener.seqs[0] if listener.seqs else 1
        socket_gaps += len({s for t, s in stored_events if t == tenant and s >= first} - set(listener.seqs))
        socket_dups += len(listener.seqs) - len(set(listener.seqs))
    return {
        "bench": "chaos", "duration_s": round(elapsed, 1), "seed": seed,
        "faults": dict(sorted(faults.count.items())),
        "acknowledged": {"events": len(load.events), "usage": len(load.usage), "settles": len(load.settled),
                         "messages": len(load.messages), "flows": len(load.flows)},
        "lost": sum(lost.values()), "duplicated": sum(duplicated.values()),
        "overspend_usd": round(sum(max(0.0, n / 1e9 - CAP_USD) for n in spent.values()), 6),
        "stuck_flows": len(stuck),
        "p99_ms_outside_faults": round(percentile(outside, 0.99) or 0.0, 1),
        "p50_ms_outside_faults": round(percentile(outside, 0.5) or 0.0, 1),
        "requests": len(load.requests), "acknowledged_requests": sum(1 for *_, ok in load.requests if ok),
        "refused": dict(load.refused.most_common(12)),
        "lost_by_kind": lost, "duplicated_by_kind": duplicated,
        "spent_usd": {t[-1:]: round(n / 1e9, 6) for t, n in spent.items()}, "cap_usd": CAP_USD,
        "flows": Counter(f["status"] for f in ended), "stuck": stuck[:3],
        "stored_flow_states": dict(Counter(status for status, _ in stored_flows.values())),
        "socket_gaps": socket_gaps, "socket_duplicates": socket_dups,
        "socket_reconnects": sum(listener.reconnects for listener in listeners),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load and faults (at most 3600)")
    parser.add_argument("--database-url", help="a PostgreSQL database (default: a fresh one on 127.0.0.1)")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    if not 10 <= args.duration <= MAX_DURATION:
        parser.error(f"--duration must be in [10, {MAX_DURATION}] seconds")
    database_url = bench_database(args.database_url)
    if not database_url.startswith("postgresql"):
        parser.error("the chaos soak restarts PostgreSQL: it needs a PostgreSQL database")
    upgrade(database_url)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    with metrics_enabled():
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
        workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace="raytenant", log_to_driver=False)
    try:
        result = asyncio.run(soak(database_url, cluster, workers, args.duration, seed))
    finally:
        postgres("start")
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            cluster.shutdown()
    print(json.dumps(result, default=str), flush=True)


if __name__ == "__main__":
    main()
