"""Node loss on a real multi-node Ray cluster on this machine (ray.cluster_utils.Cluster).

Run by tests/test_node_loss.py in its own process (a process holds one Ray session, and the test
run's session is a single node):

    python -m tests.node_loss_scenario DATABASE_URL

A head and two worker nodes; every EventHub and CostLedger shard is placed (softly) on worker 1.
WebSocket clients of several tenants listen while events are published and usage is recorded over
HTTP; then worker 1 is removed. The shards restart on the surviving nodes and rebuild from storage.
Prints one JSON line: where the shards ran before and after, how long until traffic flowed again,
and what was acknowledged versus stored and delivered.
"""
from __future__ import annotations

from tests.local_cluster import run_scenario  # first: Ray's addresses stay on loopback

import asyncio  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from typing import Any  # noqa: E402

from tests.conftest import LiveServer  # noqa: E402 - also sets the crewai and Serve environment

import httpx  # noqa: E402
import ray  # noqa: E402
import websockets  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # noqa: E402
from sqlalchemy import select  # noqa: E402

from actors.event_hub import EventHub  # noqa: E402
from actors.shards import get_or_create  # noqa: E402
from serve_app.runtime import Runtime  # noqa: E402
from serve_app.settings import Settings  # noqa: E402
from storage.engine import create_engine  # noqa: E402
from storage.models import EventRow, UsageRow  # noqa: E402

TENANTS = 4
SOCKETS_PER_TENANT = 3
RATE = 40  # publishes and usage records per second, each


def node_of(handle: Any) -> str:
    return ray._private.state.actors(handle._actor_id.hex())["Address"]["NodeID"]


def place(runtime: Runtime, node_id: str) -> dict[str, Any]:
    """Create the hub and ledger shards on `node_id`, softly (Ray may restart them elsewhere).

    A soft affinity is a preference: while a fresh node settles, the scheduler may still start an
    actor elsewhere, so a shard that landed on another node is created again."""
    where = {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id, soft=True)}
    hub, ledger = runtime.hub, runtime.ledger
    makers = {f"hub-{s}": (lambda s=s: get_or_create(EventHub, hub.kind, s, hub.database_url, hub.options, options=where))
              for s in range(hub.shards)}
    makers.update({f"ledger-{s}": (lambda s=s: get_or_create(ledger.actor_class, ledger.kind, s, *ledger.init_args,
                                                               options=where)) for s in range(ledger.shards)})
    placed = {}
    for name, make in makers.items():
        for _ in range(20):
            handle = make()
            ray.get(handle.ready.remote())
            if node_of(handle) == node_id:
                break
            ray.kill(handle, no_restart=True)
            time.sleep(0.5)
        placed[name] = handle
    for shard in range(hub.shards):
        hub._handles[shard] = placed[f"hub-{shard}"]
    for shard in range(ledger.shards):
        ledger._handles[shard] = placed[f"ledger-{shard}"]
    return placed


class Listener:
    """A WebSocket client that resumes from its last seq whenever its socket closes."""

    def __init__(self, server: LiveServer, tenant: str) -> None:
        self.server, self.tenant = server, tenant
        self.seqs: list[int] = []
        self.reconnects = 0
        self.stop = asyncio.Event()

    async def run(self) -> None:
        token = self.server.token(self.tenant)
        while not self.stop.is_set():
            query = f"?last_seq={self.seqs[-1]}" if self.seqs else ""
            try:
                async with websockets.connect(self.server.ws_url + query,
                                              additional_headers={"Authorization": f"Bearer {token}"}) as ws:
                    await ws.send(json.dumps({"type": "subscribe_flow", "flow_id": "*"}))
                    while not self.stop.is_set():
                        try:
                            message = json.loads(await asyncio.wait_for(ws.recv(), 0.5))
                        except asyncio.TimeoutError:
                            continue
                        if "seq" in message and message.get("type") == "flow_update":
                            self.seqs.append(message["seq"])
            except (websockets.ConnectionClosed, OSError):
                self.reconnects += 1
                await asyncio.sleep(0.2)


async def traffic(server: LiveServer, tenants: list[str], stop: asyncio.Event, acked: dict[str, Any],
                  errors: dict[str, int], timeline: list[tuple[float, str, bool]]) -> None:
    auth = {t: server.auth(t) for t in tenants}
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        n = 0
        while not stop.is_set():
            n += 1
            tenant = tenants[n % len(tenants)]
            started = time.monotonic()
            for kind, request in (
                ("event", client.post("/v1/events", headers=auth[tenant],
                                      json={"type": "flow_update", "flow_id": "f", "data": {"n": n}})),
                ("usage", client.post("/v1/costs/usage", headers=auth[tenant],
                                      json={"model": "gpt-4o-mini", "input_tokens": 100, "output_tokens": 10,
                                            "idempotency_key": f"k-{n}"})),
            ):
                try:
                    response = await request
                    ok = response.status_code in (200, 201)
                except httpx.HTTPError:
                    ok = False
                timeline.append((time.monotonic(), kind, ok))
                if not ok:
                    errors[kind] = errors.get(kind, 0) + 1
                elif kind == "event":
                    acked["events"].setdefault(tenant, []).extend(response.json()["seqs"])
                else:
                    acked["usage"].setdefault(tenant, []).append(f"k-{n}")
            await asyncio.sleep(max(0.0, 1 / RATE - (time.monotonic() - started)))


async def scenario(database_url: str, cluster: Cluster, workers: list[Any]) -> dict[str, Any]:
    doomed = workers[-1]
    settings = Settings.from_env(database_url=database_url, operator_token="node-loss", actor_prefix="nl-",
                                 hub_shards=2, ledger_shards=2)
    runtime = Runtime(settings)
    placed = place(runtime, doomed.node_id)
    tenants = [f"nl-{uuid.uuid4().hex[:8]}-{i}" for i in range(TENANTS)]
    async with LiveServer(runtime) as server:
        before = {name: node_of(handle) for name, handle in placed.items()}
        listeners = [Listener(server, t) for t in tenants for _ in range(SOCKETS_PER_TENANT)]
        listening = [asyncio.create_task(listener.run()) for listener in listeners]
        await asyncio.sleep(2)
        stop = asyncio.Event()
        acked: dict[str, Any] = {"events": {}, "usage": {}}
        errors: dict[str, int] = {}
        timeline: list[tuple[float, str, bool]] = []
        load = asyncio.create_task(traffic(server, tenants, stop, acked, errors, timeline))
        await asyncio.sleep(4)
        removed_at = time.monotonic()
        await asyncio.to_thread(cluster.remove_node, doomed, True)
        await asyncio.sleep(12)
        stop.set()
        await load
        await asyncio.sleep(3)  # the last events reach the sockets
        for listener in listeners:
            listener.stop.set()
        await asyncio.gather(*listening)
        after = {name: node_of(handle) for name, handle in placed.items()}
    engine = create_engine(database_url)
    async with engine.connect() as conn:
        stored_events = {(r.tenant, r.seq) for r in await conn.execute(
            select(EventRow.tenant, EventRow.seq).where(EventRow.tenant.in_(tenants), EventRow.type == "flow_update"))}
        usage_keys = [(r.tenant, r.idempotency_key) for r in await conn.execute(
            select(UsageRow.tenant, UsageRow.idempotency_key).where(UsageRow.tenant.in_(tenants)))]
    await engine.dispose()
    acked_events = {(t, s) for t, seqs in acked["events"].items() for s in seqs}
    acked_usage = {(t, k) for t, keys in acked["usage"].items() for k in keys}
    gaps = duplicates = 0
    for listener in listeners:
        expected = sorted(s for t, s in stored_events if t == listener.tenant and s > (listener.seqs[0] - 1 if listener.seqs else 0))
        gaps += len(set(expected) - set(listener.seqs))
        duplicates += len(listener.seqs) - len(set(listener.seqs))
    failures_after = [t for t, _, ok in timeline if t > removed_at and not ok]
    recovered = max(failures_after) - removed_at if failures_after else 0.0
    return {
        "nodes_before": sorted(set(before.values())), "nodes_after": sorted(set(after.values())),
        "doomed_node": doomed.node_id,
        "moved": sorted(name for name in placed if before[name] == doomed.node_id and after[name] != doomed.node_id),
        "still_on_doomed": sorted(name for name in placed if after[name] == doomed.node_id),
        "placed_on_doomed": sorted(name for name in placed if before[name] == doomed.node_id),
        "acked_events": len(acked_events), "lost_events": len(acked_events - stored_events),
        "acked_records": len(acked_usage), "lost_records": len(acked_usage - set(usage_keys)),
        "duplicated_records": len(usage_keys) - len(set(usage_keys)),
        "delivered": sum(len(listener.seqs) for listener in listeners), "gaps": gaps, "duplicated_deliveries": duplicates,
        "reconnects": sum(listener.reconnects for listener in listeners), "errors_during_failover": errors,
        "recovered_after_s": round(recovered, 2),
    }


if __name__ == "__main__":
    run_scenario(scenario)
