"""Three direct-ingress replicas behind the balancer, and one of them killed under load.

Run by tests/test_replicas.py in its own process (a process holds one Ray session, and Serve's
replicas need a Serve instance of their own):

    python -m tests.replicas_scenario DATABASE_URL

Serve runs the real ingress deployment with three replicas (direct ingress, each on its own
loopback port); `serve_app.cli.balancer` listens in front of them as `raytenant run --replicas 3` does.
WebSocket clients of several tenants connect through the balancer (so they spread over the
replicas) and resume with `last_seq` whenever their socket closes; events are published through
the balancer too, so each replica publishes some. Midway one replica is killed. Prints one JSON
line: where the sockets went, what was acknowledged, what each client saw (gaps, duplicates,
order) and how many clients had to reconnect.
"""
from __future__ import annotations

from tests.local_cluster import run_scenario  # first: Ray's addresses stay on loopback

import asyncio  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from typing import Any  # noqa: E402

from tests.conftest import _free_port  # noqa: E402 - also sets the crewai and Serve environment

import aiohttp  # noqa: E402
import ray  # noqa: E402
from ray import serve  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402
from sqlalchemy import select  # noqa: E402

from bench.common import ResumingListener  # noqa: E402
from serve_app.auth import Tokens  # noqa: E402
from serve_app.client import AsyncClient, RaytenantError  # noqa: E402
from serve_app.cli.balancer import Balancer, serve_targets  # noqa: E402
from serve_app.deployment import APP_NAME  # noqa: E402
from serve_app.cli.launcher import deploy  # noqa: E402
from storage.engine import create_engine  # noqa: E402
from storage.models import EventRow  # noqa: E402

REPLICAS = 3
TENANTS = 4
SOCKETS_PER_TENANT = 6
RATE = 40  # publishes per second, all tenants together
OPERATOR = "replicas-scenario"


def replica_actors() -> list[Any]:
    """The ingress deployment's replica actors (Serve names them SERVE_REPLICA::<app>#<deployment>#…)."""
    found = []
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["name"].startswith(f"SERVE_REPLICA::{APP_NAME}#"):
            found.append(ray.get_actor(actor["name"], namespace=actor["namespace"]))
    return found


async def publish(url: str, tokens: dict[str, str], stop: asyncio.Event, acked: dict[str, list[int]],
                  failures: list[float]) -> None:
    tenants = list(tokens)
    # a new connection each time, so publishes spread over the replicas
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        clients = {tenant: AsyncClient(url, token, timeout=10, http=http) for tenant, token in tokens.items()}
        n = 0
        while not stop.is_set():
            n += 1
            tenant = tenants[n % len(tenants)]
            started = time.monotonic()
            try:
                answer = await clients[tenant].events.publish({"type": "flow_update", "flow_id": "f", "data": {"n": n}})
                acked.setdefault(tenant, []).extend(answer["seqs"])
            except RaytenantError:
                failures.append(started)
            await asyncio.sleep(max(0.0, 1 / RATE - (time.monotonic() - started)))


async def scenario(database_url: str, _cluster: Cluster, _workers: list[Any]) -> dict[str, Any]:
    settings = {"database_url": database_url, "operator_token": OPERATOR, "actor_prefix": f"rep-{uuid.uuid4().hex[:6]}-"}
    port = _free_port()
    await asyncio.to_thread(deploy, settings, host="127.0.0.1", port=port, num_replicas=REPLICAS)
    targets = serve_targets("127.0.0.1", port)
    deadline = time.monotonic() + 90
    while len(await targets()) < REPLICAS:
        assert time.monotonic() < deadline, "the replicas did not start"
        await asyncio.sleep(0.5)
    balancer = Balancer(targets, refresh=0.5)
    await balancer.start()
    tokens = {f"rep-{uuid.uuid4().hex[:8]}-{i}": "" for i in range(TENANTS)}
    minting = Tokens(OPERATOR)
    tokens = {tenant: minting.mint(tenant)[0] for tenant in tokens}
    ws_url = balancer.url.replace("http", "ws", 1) + "/v1/ws"
    clients = {tenant: [ResumingListener(ws_url, token) for _ in range(SOCKETS_PER_TENANT)] for tenant, token in tokens.items()}
    every = [client for group in clients.values() for client in group]
    running = [asyncio.create_task(client.run()) for client in every]
    await asyncio.wait_for(asyncio.gather(*(client.connected.wait() for client in every)), 60)
    spread = {f"{host}:{port}": n for (host, port), n in balancer.connections.items()}
    stop = asyncio.Event()
    acked: dict[str, list[int]] = {}
    failures: list[float] = []
    publishing = asyncio.create_task(publish(balancer.url, tokens, stop, acked, failures))
    await asyncio.sleep(4)
    [victim, *_] = replica_actors()
    killed_at = time.monotonic()
    ray.kill(victim, no_restart=True)
    await asyncio.sleep(12)
    stop.set()
    await publishing
    await asyncio.sleep(3)  # the last events reach every socket
    for client in every:
        client.stop.set()
    await asyncio.gather(*running)
    await balancer.close()
    engine = create_engine(database_url)
    async with engine.connect() as conn:
        stored = {(r.tenant, r.seq) for r in await conn.execute(
            select(EventRow.tenant, EventRow.seq).where(EventRow.tenant.in_(list(tokens))))}
    await engine.dispose()
    gaps = duplicates = out_of_order = 0
    missing: list[dict[str, Any]] = []
    for tenant, group in clients.items():
        for client in group:
            expected = {s for t, s in stored if t == tenant and s >= (client.seqs[0] if client.seqs else 1)}
            gaps += len(expected - set(client.seqs))
            if expected - set(client.seqs):
                missing.append({"missing": sorted(expected - set(client.seqs))[:10], "last": client.seqs[-3:],
                                "reconnects": client.reconnects, "head": max(expected)})
            duplicates += len(client.seqs) - len(set(client.seqs))
            out_of_order += sum(1 for a, b in zip(client.seqs, client.seqs[1:]) if b <= a)
    acked_events = {(t, s) for t, seqs in acked.items() for s in seqs}
    serve.delete(APP_NAME)
    return {
        "replicas": REPLICAS, "sockets": len(every), "sockets_per_replica": spread,
        "acked_events": len(acked_events), "lost_events": len(acked_events - stored),
        "publish_failures": len(failures),
        "publish_failures_after_5s": sum(1 for t in failures if t > killed_at + 5),
        "delivered": sum(len(client.seqs) for client in every), "gaps": gaps, "duplicated": duplicates,
        "out_of_order": out_of_order, "clients_reconnected": sum(1 for client in every if client.reconnects),
        "targets_after": len(balancer.targets), "missing": missing[:5],
    }


if __name__ == "__main__":
    run_scenario(scenario, workers=1)
