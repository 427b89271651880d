"""Node loss on a real multi-node Ray cluster on this machine (ray.cluster_utils.Cluster).

Run by tests/test_node_loss.py in its own process (a process holds one Ray session, and the test
run's session is a single node):

    python -m tests.node_loss_scenario DATABASE_URL

A head and two worker nodes; every shard (EventHub, CostLedger, LearningModel, Mailbox and the
FlowRunner) is placed (softly) on worker 2. WebSocket clients of several tenants listen while
events are published and usage is recorded over HTTP, and discovery flows run; then worker 2 is
removed. The shards restart on the surviving nodes and rebuild from storage; the runner resumes
the flows it was running. Prints one JSON line: where the shards ran before and after, how long
until traffic flowed again, what was acknowledged versus stored and delivered, and how the flows
ended.
"""
from __future__ import annotations

from tests.local_cluster import run_scenario  # first: Ray's addresses stay on loopback

import asyncio  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from typing import Any  # noqa: E402

from tests.conftest import LiveServer  # noqa: E402 - also sets the crewai and Serve environment

import ray  # noqa: E402
import websockets  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # noqa: E402
from sqlalchemy import select  # noqa: E402

from actors.event_hub.actor import EventHub  # noqa: E402
from actors.substrate.placement import get_or_create  # noqa: E402
from serve_app.runtime import Runtime  # noqa: E402
from serve_app.client import AsyncClient, RaytenantError, async_pool  # noqa: E402
from serve_app.settings import Settings  # noqa: E402
from storage.engine import create_engine  # noqa: E402
from storage.models import EventRow, UsageRow  # noqa: E402
from crews.samples import sample_inventory  # noqa: E402

SAMPLE = sample_inventory()

TENANTS = 4
SOCKETS_PER_TENANT = 3
RATE = 40  # publishes and usage records per second, each
FLOWS = 2  # discovery flows running when the node goes
LLM_LATENCY = 0.5  # seconds per OfflineLLM call: a flow takes 5+ s, so it is mid-flight at the loss


def node_of(handle: Any) -> str:
    return ray._private.state.actors(handle._actor_id.hex())["Address"]["NodeID"]


def place(runtime: Runtime, node_id: str) -> dict[str, Any]:
    """Create every shard on `node_id`, softly (Ray may restart them elsewhere).

    A soft affinity is a preference: while a fresh node settles, the scheduler may still start an
    actor elsewhere, so a shard that landed on another node is created again. Named shards are
    found by name, so the flow runner's own clients reach these same actors."""
    where = {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id, soft=True)}
    hub = runtime.hub
    makers = {("hub", hub, s): (lambda s=s: get_or_create(EventHub, hub.kind, s, hub.database_url, hub.options,
                                                          options=where)) for s in range(hub.shards)}
    for label, client in (("ledger", runtime.ledger), ("learning", runtime.learning), ("mailbox", runtime.mailbox),
                          ("flows", runtime.flows)):
        makers.update({(label, client, s): (lambda c=client, s=s: get_or_create(c.actor_class, c.kind, s, *c.init_args,
                                                                                options=where))
                       for s in range(client.shards)})
    placed = {}
    for (label, client, shard), make in makers.items():
        for _ in range(20):
            handle = make()
            ray.get(handle.ready.remote())
            if node_of(handle) == node_id:
                break
            ray.kill(handle, no_restart=True)
            time.sleep(0.5)
        placed[f"{label}-{shard}"] = client._handles[shard] = handle
    return placed


class Listener:
    """A WebSocket client that resumes from its last seq whenever its socket closes. It keeps every
    seq the server sent, duplicates included: the scenarios audit the wire, which the typed
    client's `stream()` would hide (it delivers each seq once by design)."""

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
    async with async_pool() as http:
        clients = {t: AsyncClient(server.url, server.token(t), timeout=10, http=http) for t in tenants}
        n = 0
        while not stop.is_set():
            n += 1
            tenant = tenants[n % len(tenants)]
            rt = clients[tenant]
            started = time.monotonic()
            for kind, call in (
                ("event", lambda: rt.events.publish({"type": "flow_update", "flow_id": "f", "data": {"n": n}})),
                ("usage", lambda: rt.costs.record({"model": "gpt-4o-mini", "input_tokens": 100, "output_tokens": 10,
                                                   "idempotency_key": f"k-{n}"})),
            ):
                try:
                    answer, ok = await call(), True
                except RaytenantError:
                    ok = False
                timeline.append((time.monotonic(), kind, ok))
                if not ok:
                    errors[kind] = errors.get(kind, 0) + 1
                elif kind == "event":
                    acked["events"].setdefault(tenant, []).extend(answer["seqs"])
                else:
                    acked["usage"].setdefault(tenant, []).append(f"k-{n}")
            await asyncio.sleep(max(0.0, 1 / RATE - (time.monotonic() - started)))


async def start_flows(server: LiveServer, tenants: list[str]) -> list[tuple[str, str]]:
    started = []
    for tenant in tenants:
        async with server.client(tenant) as rt:
            flow = await rt.flows.create("node loss", SAMPLE["data"], target_schema=SAMPLE["target_schema"])
        started.append((tenant, flow["flow_id"]))
    return started


async def flows_ended(server: LiveServer, flows: list[tuple[str, str]], timeout: float = 120.0) -> list[dict[str, Any]]:
    """Each flow once it has ended (or as it stands at the timeout)."""
    deadline = time.monotonic() + timeout
    found: list[dict[str, Any]] = []
    for tenant, flow_id in flows:
        async with server.client(tenant) as rt:
            while True:
                try:
                    flow = await rt.flows.get(flow_id)
                except RaytenantError:
                    flow = {}
                if flow.get("status") in ("completed", "failed", "cancelled") or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
        found.append(flow)
    return found



async def scenario(database_url: str, cluster: Cluster, workers: list[Any]) -> dict[str, Any]:
    doomed = workers[-1]
    settings = Settings.from_env(database_url=database_url, operator_token="node-loss", actor_prefix="nl-",
                                 hub_shards=2, ledger_shards=2, llm_latency=LLM_LATENCY)
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
        await asyncio.sleep(3)
        flows = await start_flows(server, tenants[:FLOWS])
        await asyncio.sleep(1.5)  # the flows are in their first phases
        removed_at = time.monotonic()
        await asyncio.to_thread(cluster.remove_node, doomed, True)
        await asyncio.sleep(12)
        # A loaded machine gets more time, not a failure: traffic goes on until enough was acknowledged.
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline and min(sum(len(v) for v in acked[k].values()) for k in acked) < 150:
            await asyncio.sleep(0.5)
        stop.set()
        await load
        ended = await flows_ended(server, flows)
        await asyncio.sleep(3)  # the last events reach the sockets
        for listener in listeners:
            listener.stop.set()
        await asyncio.gather(*listening)
        after = {name: node_of(handle) for name, handle in placed.items()}
    engine = create_engine(database_url)
    async with engine.connect() as conn:
        stored_events = {(r.tenant, r.seq) for r in await conn.execute(
            select(EventRow.tenant, EventRow.seq).where(EventRow.tenant.in_(tenants), EventRow.type == "flow_update"))}
        usage_keys = [(r.tenant, r.idempotency_key) for r in await conn.execute(  # the traffic's, not the flows'
            select(UsageRow.tenant, UsageRow.idempotency_key).where(UsageRow.tenant.in_(tenants),
                                                                    UsageRow.idempotency_key.like("k-%")))]
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
        "flows": [{k: f[k] for k in ("status", "attempts", "progress", "error")} for f in ended],
    }


if __name__ == "__main__":
    run_scenario(scenario)
