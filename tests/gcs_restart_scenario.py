"""The head's GCS killed and restarted under traffic, with GCS fault tolerance (external Redis).

Run by tests/test_gcs_restart.py in its own process:

    python -m tests.gcs_restart_scenario DATABASE_URL [--no-redis]

The cluster (a head and one worker, `ray.cluster_utils.Cluster`) keeps its GCS state in this
machine's Redis (RAY_REDIS_ADDRESS=127.0.0.1:6379, a namespace of its own, deleted at the end).
The ingress serves from this process; WebSocket clients listen while events are published and
usage recorded. Then the GCS process is killed, left down for 8 s, and started again from Redis.
Prints one JSON line: what was acknowledged against what the database holds, what the sockets
saw, the requests refused while the GCS was down, and whether a new actor could be created after
the restart (which needs the GCS). `--no-redis` runs the same without fault tolerance, to show
what it protects.
"""
from __future__ import annotations

import os
import sys
import uuid

FAULT_TOLERANT = "--no-redis" not in sys.argv
if FAULT_TOLERANT:  # before Ray starts: the GCS keeps its tables in Redis, under our own namespace
    os.environ["RAY_REDIS_ADDRESS"] = "127.0.0.1:6379"
    os.environ["RAY_external_storage_namespace"] = f"raytenant-gcs-{uuid.uuid4().hex[:8]}"

from tests.local_cluster import run_scenario  # noqa: E402 - first of the Ray imports

import asyncio  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from bench.common import ResumingListener, free_port  # noqa: E402
from serve_app.client import AsyncClient, RaytenantError, async_pool  # noqa: E402
from serve_app.runtime import Runtime  # noqa: E402
from serve_app.settings import Settings  # noqa: E402
from tests.conftest import LiveServer  # noqa: E402
from tests.scenario_process import stored_records  # noqa: E402

TENANTS = 3
SOCKETS_PER_TENANT = 2
RATE = 20  # rounds per second: one publish and one usage record each
DOWN_S = 8.0


@ray.remote(num_cpus=0)
class Probe:
    def ping(self) -> str:
        return "pong"


async def traffic(server: LiveServer, tenants: list[str], stop: asyncio.Event, acked: dict[str, set],
                  log: list[tuple[float, str, bool]]) -> None:
    async with async_pool() as http:
        clients = {t: AsyncClient(server.url, server.token(t), timeout=10, http=http) for t in tenants}
        n = 0
        while not stop.is_set():
            n += 1
            tenant = tenants[n % len(tenants)]
            rt = clients[tenant]
            started = time.monotonic()
            for kind, call in (
                ("publish", lambda: rt.events.publish({"type": "flow_update", "flow_id": "f", "data": {"n": n}})),
                ("usage", lambda: rt.costs.record({"model": "gpt-4o-mini", "input_tokens": 10, "output_tokens": 5,
                                                   "idempotency_key": f"k-{n}"})),
            ):
                try:
                    answer, ok = await call(), True
                except RaytenantError:
                    ok = False
                log.append((time.monotonic(), kind, ok))
                if ok and kind == "publish":
                    acked["events"].update((tenant, seq) for seq in answer["seqs"])
                elif ok:
                    acked["usage"].add((tenant, f"k-{n}"))
            await asyncio.sleep(max(0.0, 1 / RATE - (time.monotonic() - started)))


async def scenario(database_url: str, cluster: Cluster, _workers: list[Any]) -> dict[str, Any]:
    settings = Settings.from_env(database_url=database_url, operator_token="gcs-restart", actor_prefix="gcs-")
    tenants = [f"gcs-{uuid.uuid4().hex[:8]}-{i}" for i in range(TENANTS)]
    async with LiveServer(Runtime(settings)) as server:
        listeners = [ResumingListener(server.ws_url, server.token(t)) for t in tenants for _ in range(SOCKETS_PER_TENANT)]
        listening = [asyncio.create_task(listener.run()) for listener in listeners]
        await asyncio.wait_for(asyncio.gather(*(listener.connected.wait() for listener in listeners)), 60)
        stop = asyncio.Event()
        acked: dict[str, set] = {"events": set(), "usage": set()}
        log: list[tuple[float, str, bool]] = []
        load = asyncio.create_task(traffic(server, tenants, stop, acked, log))
        await asyncio.sleep(3)
        killed_at = time.monotonic()
        await asyncio.to_thread(cluster.head_node.kill_gcs_server)
        await asyncio.sleep(DOWN_S)
        restarted_at = time.monotonic()
        await asyncio.to_thread(cluster.head_node.start_gcs_server)
        await asyncio.sleep(10)
        try:  # the GCS serves again: a new actor can be created and called
            probe = Probe.remote()
            created = await asyncio.wait_for(probe.ping.remote(), 30) == "pong"
            ray.kill(probe)
        except Exception:  # noqa: BLE001 - reported, the test decides
            created = False
        stop.set()
        await load
        await asyncio.sleep(2)
        for listener in listeners:
            listener.stop.set()
        await asyncio.gather(*listening)
    stored_events, usage = await stored_records(database_url, tenants)
    gaps = duplicates = 0
    for listener, tenant in zip(listeners, [t for t in tenants for _ in range(SOCKETS_PER_TENANT)]):
        first = listener.seqs[0] if listener.seqs else 1
        gaps += len({s for t, s in stored_events if t == tenant and s >= first} - set(listener.seqs))
        duplicates += len(listener.seqs) - len(set(listener.seqs))
    return {
        "fault_tolerant": FAULT_TOLERANT, "down_s": round(restarted_at - killed_at, 2),
        "requests_while_down": sum(1 for at, _, _ in log if killed_at < at < restarted_at),
        "refused_while_down": sum(1 for at, _, ok in log if killed_at < at < restarted_at and not ok),
        "refused_after_restart": sum(1 for at, _, ok in log if at > restarted_at + 5 and not ok),
        "requests_after_restart": sum(1 for at, _, _ in log if at > restarted_at + 5),
        "acked_events": len(acked["events"]), "lost_events": len(acked["events"] - stored_events),
        "acked_usage": len(acked["usage"]), "lost_usage": len(acked["usage"] - set(usage)),
        "duplicated_usage": len(usage) - len(set(usage)),
        "delivered": sum(len(listener.seqs) for listener in listeners), "gaps": gaps, "duplicated_deliveries": duplicates,
        "socket_reconnects": sum(listener.reconnects for listener in listeners),
        "new_actor_after_restart": created,
    }


def delete_gcs_tables() -> None:
    """This run's keys in the machine's Redis, once the cluster is gone."""
    from ray._private.gcs_utils import cleanup_redis_storage

    cleanup_redis_storage(host="127.0.0.1", port=6379, password="", use_ssl=False,
                          storage_namespace=os.environ["RAY_external_storage_namespace"])


if __name__ == "__main__":
    try:
        run_scenario(scenario, workers=1, head_args={"gcs_server_port": free_port()})
    finally:
        if FAULT_TOLERANT:
            delete_gcs_tables()
