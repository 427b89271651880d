"""Agent-collaboration benchmark: discovery flows completed per minute, and durable mailbox
messages per second (batched send + receive + ack).

Flows: --concurrency clients (1, 4 and 16 by default), each its own tenant, start a discovery flow
on the bundled sample inventory over HTTP, poll it to its end and start the next, for --flow-seconds.
Every LLM call goes to the OfflineLLM through MeteredLLM and the ledger, as in production. The
OfflineLLM answers at once unless --latencies gives it a provider-like delay per call: at 0 the
figure is raytenant's own overhead per flow; with a delay, concurrency overlaps the waiting.

Each message is stored three times on its way (sent, handed out, acknowledged), each time in a
group commit before the caller is answered. Producers send batches of --batch messages to
--tenants x --agents queues while one consumer per queue receives up to --batch at a time
(long-polling) and acknowledges what it got in one call. After --duration seconds the producers
stop and the consumers drain. Paths: the actor client (MailboxClient, as flow runners use it) and
HTTP. A message counts when its ack was answered; lost = sent but never handed out and acked, read
back from the database.

    python -m bench.flows                       # both halves
    python -m bench.flows --paths flows --latencies 0,0.25
"""
from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any, Awaitable, Callable

from sqlalchemy import func, select

from bench.common import bench_database, emit, raytenant_service, tenant_clients
from serve_app.client import AsyncClient
from storage.engine import create_engine
from storage.models import MessageRow
from crews.samples import sample_inventory

Send = Callable[[str, str, list[Any]], Awaitable[list[str]]]
Receive = Callable[[str, str, int], Awaitable[list[str]]]
Ack = Callable[[str, str, list[str]], Awaitable[None]]


def queue_tenants(label: str, args) -> list[str]:
    """This run's tenants: new ones, so the audit reads only this run's messages."""
    run = f"{label}-{int(time.time() * 1000) % 10**8}"
    return [f"mb-{run}-{t}" for t in range(args.tenants)]


async def drive(tenants: list[str], args, send: Send, receive: Receive, ack: Ack) -> dict[str, Any]:
    queues = [(tenant, f"agent-{a}") for tenant in tenants for a in range(args.agents)]
    sent: set[str] = set()
    acked: set[str] = set()
    stop_sending = asyncio.Event()
    producers_done = asyncio.Event()
    errors = 0

    async def producer(i: int) -> None:
        nonlocal errors
        n = 0
        while not stop_sending.is_set():
            tenant, agent = queues[(i + n) % len(queues)]
            n += 1
            try:
                sent.update(await send(tenant, agent, [{"n": n, "i": i}] * args.batch))
            except Exception:  # noqa: BLE001 - counted
                errors += 1

    async def consumer(tenant: str, agent: str, deadline: list[float]) -> None:
        nonlocal errors
        while time.perf_counter() < deadline[0]:
            drained_before = producers_done.is_set()  # every send was answered before this receive
            try:
                ids = await receive(tenant, agent, args.batch)
                if ids:
                    await ack(tenant, agent, ids)
                    acked.update(ids)
                elif drained_before:
                    return
            except Exception:  # noqa: BLE001 - counted
                errors += 1

    started = time.perf_counter()
    deadline = [started + args.duration + 30]
    consumers = [asyncio.create_task(consumer(t, a, deadline)) for t, a in queues]
    producers = [asyncio.create_task(producer(i)) for i in range(args.producers)]
    await asyncio.sleep(args.duration)
    stop_sending.set()
    await asyncio.gather(*producers)
    producers_done.set()
    await asyncio.gather(*consumers)
    elapsed = time.perf_counter() - started
    return {"queues": queues, "sent": sent, "acked": acked, "elapsed": elapsed, "errors": errors}


async def audit(database: str, result: dict[str, Any]) -> dict[str, int]:
    tenants = sorted({t for t, _ in result["queues"]})
    engine = create_engine(database)
    try:
        async with engine.connect() as conn:
            states = dict((await conn.execute(
                select(MessageRow.state, func.count()).where(MessageRow.tenant.in_(tenants)).group_by(MessageRow.state)
            )).all())
    finally:
        await engine.dispose()
    return {"stored": sum(states.values()), "stored_acked": states.get("acked", 0),
            "lost": len(result["sent"] - result["acked"]), "not_acked_in_db": sum(states.values()) - states.get("acked", 0)}


def line(path: str, result: dict[str, Any], checked: dict[str, int], args) -> dict[str, Any]:
    return {
        "bench": "mailbox", "path": path, "queues": len(result["queues"]), "batch": args.batch,
        "producers": args.producers, "seconds": round(result["elapsed"], 2), "sent": len(result["sent"]),
        "acked": len(result["acked"]), "durable_messages_per_s": round(len(result["acked"]) / result["elapsed"], 1),
        "target_messages_per_s": 15_000, "errors": result["errors"], **checked,
    }


async def via_actor(database: str, args) -> dict[str, Any]:
    from actors.mailbox.client import MailboxClient

    client = MailboxClient(database, 1)

    async def send(tenant: str, agent: str, contents: list[Any]) -> list[str]:
        items = [{"receiver": agent, "sender": "producer", "type": "notification", "content": c} for c in contents]
        return [m["message_id"] for m in await client.call("send", tenant, items)]

    async def receive(tenant: str, agent: str, count: int) -> list[str]:
        return [m["message_id"] for m in await client.call_alone("receive", tenant, agent, count, 0.5, 30.0)]

    async def ack(tenant: str, agent: str, ids: list[str]) -> None:
        await client.call("ack_many", tenant, agent, ids)

    return await drive(queue_tenants("actor", args), args, send, receive, ack)


async def via_http(url: str, args) -> dict[str, Any]:
    tenants = queue_tenants("http", args)
    async with tenant_clients(url, tenants, connections=200) as clients:

        async def send(tenant: str, agent: str, contents: list[Any]) -> list[str]:
            answer = await clients[tenant].agents.send_many(agent, [{"sender": "producer", "content": c}
                                                                   for c in contents])
            return answer["message_ids"]

        async def receive(tenant: str, agent: str, count: int) -> list[str]:
            answer = await clients[tenant].agents.receive(agent, max=count, wait=0.5)
            return [m["message_id"] for m in answer["messages"]]

        async def ack(tenant: str, agent: str, ids: list[str]) -> None:
            await clients[tenant].agents.ack_many(agent, ids)

        return await drive(tenants, args, send, receive, ack)


SAMPLE = sample_inventory()


async def flows_per_minute(url: str, concurrency: int, seconds: float, latency: float) -> dict[str, Any]:
    run = int(time.time() * 1000) % 10**8
    durations: list[float] = []
    outcomes: dict[str, int] = {}
    deadline = time.perf_counter() + seconds

    async def client(rt: AsyncClient) -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            flow_id = (await rt.flows.create("bench", SAMPLE["data"], target_schema=SAMPLE["target_schema"]))["flow_id"]
            while True:
                await asyncio.sleep(0.05)
                status = (await rt.flows.get(flow_id))["status"]
                if status in ("completed", "failed", "cancelled"):
                    break
            outcomes[status] = outcomes.get(status, 0) + 1
            if status == "completed":
                durations.append(time.perf_counter() - started)

    began = time.perf_counter()
    async with tenant_clients(url, [f"fl-{run}-{i}" for i in range(concurrency)]) as clients:
        await asyncio.gather(*(client(rt) for rt in clients.values()))
    elapsed = time.perf_counter() - began
    durations.sort()
    return {"bench": "flows", "concurrency": concurrency, "llm_latency_s": latency, "seconds": round(elapsed, 1),
            "completed": outcomes.get("completed", 0), "not_completed": sum(outcomes.values()) - outcomes.get("completed", 0),
            "flows_per_minute": round(60 * outcomes.get("completed", 0) / elapsed, 1),
            "median_flow_s": round(durations[len(durations) // 2], 2) if durations else None}


def run_flows(database: str, args) -> None:
    for latency in [float(x) for x in args.latencies.split(",")]:
        with raytenant_service(database, settings={"llm_latency": latency, "flow_limit": 16}) as urls:
            base = None
            for concurrency in [int(x) for x in args.concurrency.split(",")]:
                result = asyncio.run(flows_per_minute(urls[0], concurrency, args.flow_seconds, latency))
                base = base or result["flows_per_minute"]
                result["ratio_vs_1"] = round(result["flows_per_minute"] / base, 2) if base else None
                emit(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paths", default="flows,actor,http")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--latencies", default="0,0.25", help="OfflineLLM seconds per call, one run each")
    parser.add_argument("--flow-seconds", type=float, default=30.0)
    parser.add_argument("--tenants", type=int, default=4)
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--producers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--database-url")
    args = parser.parse_args()
    database = bench_database(args.database_url)
    if "flows" in args.paths:
        run_flows(database, args)
    if "actor" not in args.paths and "http" not in args.paths:
        return
    with raytenant_service(database) as urls:
        if "actor" in args.paths:
            result = asyncio.run(via_actor(database, args))
            emit(line("actor", result, asyncio.run(audit(database, result)), args))
        if "http" in args.paths:
            result = asyncio.run(via_http(urls[0], args))
            emit(line("http", result, asyncio.run(audit(database, result)), args))


if __name__ == "__main__":
    main()
