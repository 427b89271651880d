"""PostgreSQL stops for a while under mixed traffic, then starts again.

Run by tests/test_db_outage.py in its own process (it stops the machine's PostgreSQL, and a process
holds one Ray session):

    python -m tests.db_outage_scenario DATABASE_URL [DOWN_SECONDS]

Tenants publish events, record usage, send agent messages, teach corrections and read back
(replays of the table, budgets, recommendations) while WebSocket clients listen and a flow runs.
Then PostgreSQL is stopped (fast shutdown: sessions are cut, new connections refused) for
DOWN_SECONDS (20 by default) and started again, always, in a finally block. Prints one JSON line:
every request with its start, end, status and error code relative to the outage, what was
acknowledged against what the database holds, what the sockets saw and how the flow ended.
"""
from __future__ import annotations

from tests.local_cluster import run_scenario  # first: Ray's addresses stay on loopback

import asyncio  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from typing import Any, Awaitable  # noqa: E402

from tests.conftest import LiveServer  # noqa: E402 - also sets the crewai and Serve environment
from tests.node_loss_scenario import Listener, flows_ended  # noqa: E402

from ray.cluster_utils import Cluster  # noqa: E402
from sqlalchemy import select  # noqa: E402

from bench.common import postgres  # noqa: E402
from crews.samples import sample_inventory  # noqa: E402
from serve_app.client import AsyncClient, RaytenantError, async_pool  # noqa: E402
from serve_app.runtime import Runtime  # noqa: E402
from serve_app.settings import Settings  # noqa: E402
from storage.engine import create_engine  # noqa: E402
from storage.models import MessageRow  # noqa: E402
from tests.scenario_process import stored_records  # noqa: E402

TENANTS = 3
SOCKETS_PER_TENANT = 2
RATE = 15  # rounds per second; each round sends one request of every kind
CORRECTION = {"original": {"field_mapping": "cust_id -> customer_name"},
              "corrected": {"field_mapping": "cust_id -> customer_id"},
              "context": {"source_fields": ["cust_id"], "target_schema": "crm"}}


def requests_for(rt: AsyncClient, n: int) -> list[tuple[str, Awaitable[Any]]]:
    """One round of mixed traffic: (kind, call). Writes carry keys the scenario can find in the
    database afterwards."""
    return [
        ("publish", rt.events.publish({"type": "flow_update", "flow_id": "f", "data": {"n": n}})),
        ("usage", rt.costs.record({"model": "gpt-4o-mini", "input_tokens": 100, "output_tokens": 10,
                                   "idempotency_key": f"k-{n}"})),
        ("message", rt.agents.send("mapper", "validator", {"n": n})),
        ("correction", rt.learning.correct(**CORRECTION)),
        ("replay", rt.events.replay(0, limit=5)),
        ("summary", rt.costs.summary()),
    ]


async def traffic(server: LiveServer, tenants: list[str], stop: asyncio.Event, log: list[dict[str, Any]],
                  acked: dict[str, set]) -> None:
    """Rounds of every kind at RATE; each request's outcome logged: `ok`, else its status and code
    (status 0 when no answer came)."""

    async def one(n: int, tenant: str, kind: str, call: Awaitable[Any]) -> None:
        started = time.monotonic()
        status, code, answer = 0, "", None
        try:
            answer = await call
        except RaytenantError as error:  # status 0: no answer (Unreachable)
            status, code = error.status, error.code
        ok = not code
        log.append({"kind": kind, "start": started, "end": time.monotonic(), "ok": ok, "status": status, "code": code})
        if ok:
            if kind == "publish":
                acked["events"].update((tenant, seq) for seq in answer["seqs"])
            elif kind == "usage":
                acked["usage"].add((tenant, f"k-{n}"))
            elif kind == "message":
                acked["messages"].update(answer["message_ids"])

    async with async_pool() as http:
        clients = {t: AsyncClient(server.url, server.token(t), timeout=30, http=http) for t in tenants}
        n, pending = 0, set()
        while not stop.is_set():
            n += 1
            tenant = tenants[n % len(tenants)]
            round_started = time.monotonic()
            for kind, call in requests_for(clients[tenant], n):
                task = asyncio.create_task(one(n, tenant, kind, call))
                pending.add(task)
                task.add_done_callback(pending.discard)
            await asyncio.sleep(max(0.0, 1 / RATE - (time.monotonic() - round_started)))
        await asyncio.gather(*pending)


async def scenario(database_url: str, _cluster: Cluster, _workers: list[Any]) -> dict[str, Any]:
    down_seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 20.0
    settings = Settings.from_env(database_url=database_url, operator_token="db-outage", actor_prefix="dbo-",
                                 llm_latency=0.3)
    tenants = [f"dbo-{uuid.uuid4().hex[:8]}-{i}" for i in range(TENANTS)]
    sample = sample_inventory()
    async with LiveServer(Runtime(settings)) as server:
        listeners = [Listener(server, t) for t in tenants for _ in range(SOCKETS_PER_TENANT)]
        listening = [asyncio.create_task(listener.run()) for listener in listeners]
        await asyncio.sleep(2)
        stop = asyncio.Event()
        log: list[dict[str, Any]] = []
        acked: dict[str, set] = {"events": set(), "usage": set(), "messages": set()}
        load = asyncio.create_task(traffic(server, tenants, stop, log, acked))
        async with server.client(tenants[0]) as rt:
            created = await rt.flows.create("outage", sample["data"], target_schema=sample["target_schema"])
            flow = (tenants[0], created["flow_id"])
        await asyncio.sleep(3)
        reconnects_before = sum(listener.reconnects for listener in listeners)
        stopped_at = time.monotonic()
        await asyncio.to_thread(postgres, "stop")
        try:
            await asyncio.sleep(down_seconds)
        finally:
            starting_at = time.monotonic()
            await asyncio.to_thread(postgres, "start")
        back_at = time.monotonic()
        reconnects_during = sum(listener.reconnects for listener in listeners) - reconnects_before
        await asyncio.sleep(10)
        stop.set()
        await load
        [ended] = await flows_ended(server, [flow], timeout=120)
        await asyncio.sleep(3)  # the last events reach the sockets
        for listener in listeners:
            listener.stop.set()
        await asyncio.gather(*listening)
    stored_events, usage_keys = await stored_records(database_url, tenants)
    engine = create_engine(database_url)
    async with engine.connect() as conn:
        messages = set((await conn.execute(select(MessageRow.id).where(MessageRow.tenant.in_(tenants)))).scalars())
    await engine.dispose()
    gaps = duplicates = 0
    for listener in listeners:
        first = listener.seqs[0] if listener.seqs else 1
        expected = {s for t, s in stored_events if t == listener.tenant and s >= first}
        gaps += len(expected - set(listener.seqs))
        duplicates += len(listener.seqs) - len(set(listener.seqs))
    for entry in log:
        entry["start"] = round(entry["start"] - stopped_at, 3)
        entry["end"] = round(entry["end"] - stopped_at, 3)
    return {
        "starting_s": round(starting_at - stopped_at, 3), "back_s": round(back_at - stopped_at, 3), "requests": log,
        "acked_events": len(acked["events"]), "lost_events": len(acked["events"] - stored_events),
        "acked_usage": len(acked["usage"]), "lost_usage": len(acked["usage"] - set(usage_keys)),
        "duplicated_usage": len(usage_keys) - len(set(usage_keys)),
        "acked_messages": len(acked["messages"]), "lost_messages": len(acked["messages"] - messages),
        "delivered": sum(len(listener.seqs) for listener in listeners), "gaps": gaps,
        "duplicated_deliveries": duplicates, "socket_reconnects_during_outage": reconnects_during,
        "flow": {k: ended.get(k) for k in ("status", "error", "progress", "attempts")},
    }


if __name__ == "__main__":
    run_scenario(scenario, workers=1)
