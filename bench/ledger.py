"""Ledger benchmark: durable usage records per second, overspend and lost records.

In one run, against the same PostgreSQL:
- the shipped path end to end over HTTP, one record per request and batches of --batch records;
- the shipped path through the actor client (CostLedgerClient, as other actors use it);
- the original design, in process (no HTTP, which only flatters it): per record, read the budget
  in one session, insert the record in a second, then read and update the budget in a third.

Each path runs --workers concurrent writers (--actor-callers for the actor client) for --duration
seconds (and at most --max-records) over --tenants tenants. One tenant in five gets a budget that fits only --tight-fit records, so the
budget check is exercised under contention (refused records do not count as throughput). Afterwards the database is read back:
- lost: acknowledged records that are not stored, or budget usage that differs from the stored sum;
- overspend: tenants whose stored spend exceeds their budget.
One JSON line per path, then one per shipped path with its ratio to the original.

    python -m bench.ledger                       # ~1 minute
    python -m bench.ledger --duration 5 --paths original,actor
"""
from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

from sqlalchemy import BigInteger, Boolean, Float, Integer, String, func, select
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bench.common import bench_database, emit, percentile, raytenant_service, tenant_clients
from serve_app.client import RaytenantError
from storage.engine import create_engine
from storage.models import BudgetRow, UsageRow

MODEL = "gpt-4o-mini"
INPUT, OUTPUT = 1200, 300


class Base(DeclarativeBase):
    """The original design's tables, kept apart from raytenant's metadata."""


class OriginalUsage(Base):
    """The original's usage table (floats, no idempotency key)."""

    __tablename__ = "bench_original_usage"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    model: Mapped[str] = mapped_column(String(200))
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    cost: Mapped[float] = mapped_column(Float)
    key: Mapped[str] = mapped_column(String(64))


class OriginalBudget(Base):
    __tablename__ = "bench_original_budget"
    tenant: Mapped[str] = mapped_column(String(128), primary_key=True)
    budget_amount: Mapped[float] = mapped_column(Float)
    current_usage: Mapped[float] = mapped_column(Float, default=0.0)
    alert_threshold: Mapped[float] = mapped_column(Float, default=0.8)
    alert_sent: Mapped[bool] = mapped_column(Boolean, default=False)


class Outcome:
    def __init__(self) -> None:
        self.acked: dict[str, str] = {}  # idempotency key -> tenant
        self.refused = 0
        self.errors = 0
        self.latencies: list[float] = []


async def drive(workers: int, duration: float, max_records: int, batch: int,
                send: Callable[[str, list[str]], Awaitable[bool]], tenants: list[str]) -> tuple[Outcome, float]:
    """`send(tenant, keys)` writes one record per key: True when acknowledged, False when refused
    for the budget (402); anything else raises."""
    outcome = Outcome()
    issued = 0
    deadline = time.perf_counter() + duration

    async def worker(w: int) -> None:
        nonlocal issued
        n = 0
        while time.perf_counter() < deadline and issued < max_records:
            keys = [f"{w}-{n + i}-{uuid.uuid4().hex[:8]}" for i in range(batch)]
            n += batch
            issued += batch
            tenant = tenants[(w * 7919 + n) % len(tenants)]
            began = time.perf_counter()
            try:
                acked = await send(tenant, keys)
            except Exception:  # noqa: BLE001 - counted, the run goes on
                outcome.errors += 1
                continue
            outcome.latencies.append((time.perf_counter() - began) * 1000)
            if acked:
                outcome.acked.update(dict.fromkeys(keys, tenant))
            else:
                outcome.refused += len(keys)

    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(workers)))
    return outcome, time.perf_counter() - started


def tenant_names(label: str, count: int) -> list[str]:
    run = uuid.uuid4().hex[:6]
    return [f"lb-{label}-{run}-{i}" for i in range(count)]


# -- the shipped path -----------------------------------------------------------------------------
async def shipped_http(url: str, args, batch: int, label: str) -> tuple[Outcome, float, list[str], dict]:
    tenants = tenant_names(label, args.tenants)
    # each tenant sets its own budget: costs:admin, which tokens minted without scopes lack
    async with tenant_clients(url, tenants, connections=args.workers + 8, scopes=["*"]) as clients:
        estimate = await clients[tenants[0]].costs.estimate(MODEL, INPUT, OUTPUT)
        one = round(estimate["total_cost"] * 1e9)
        budgets = budgets_for(tenants, one, args.tight_fit)
        for tenant, amount in budgets.items():
            await clients[tenant].costs.set_budget(amount / 1e9, alert_threshold=1.0)

        async def send(tenant: str, keys: list[str]) -> bool:
            records = [{"model": MODEL, "input_tokens": INPUT, "output_tokens": OUTPUT, "idempotency_key": k,
                        "agent": "bench"} for k in keys]
            try:
                await clients[tenant].costs.record(records[0] if len(records) == 1 else records)
            except RaytenantError as error:
                if error.status == 402:
                    return False
                raise
            return True

        outcome, elapsed = await drive(args.workers, args.duration, args.max_records, batch, send, tenants)
    return outcome, elapsed, tenants, budgets


TIGHT_EVERY = 5  # one tenant in five has a tight budget


def budgets_for(tenants: list[str], one: int, tight_fit: int) -> dict[str, int]:
    """Every fifth tenant can afford only `tight_fit` records; the rest effectively unlimited."""
    return {t: (one * tight_fit if i % TIGHT_EVERY == 0 else one * 10**7) for i, t in enumerate(tenants)}


async def shipped_actor(database_url: str, args) -> tuple[Outcome, float, list[str], dict]:
    from actors.ledger.client import CostLedgerClient
    from actors.ledger.core import LedgerError
    from actors.ledger.prices import default_catalog

    client = CostLedgerClient(database_url, shards=1)
    tenants = tenant_names("actor", args.tenants)
    one = default_catalog().lookup(MODEL).cost_nanos(INPUT, OUTPUT)
    budgets = budgets_for(tenants, one, args.tight_fit)
    await asyncio.gather(*(client.call("set_budget", t, a / 1e9, 1.0) for t, a in budgets.items()))
    async def send(tenant: str, keys: list[str]) -> bool:
        records = [{"model": MODEL, "input_tokens": INPUT, "output_tokens": OUTPUT, "idempotency_key": k,
                    "agent": "bench"} for k in keys]
        try:
            await client.call("record_usage", tenant, records)
        except LedgerError as error:
            if error.status == 402:
                return False
            raise
        return True

    outcome, elapsed = await drive(args.actor_callers, args.duration, args.max_records, 1, send, tenants)
    return outcome, elapsed, tenants, budgets


async def audit_shipped(database_url: str, outcome: Outcome, tenants: list[str], budgets: dict) -> dict:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                select(UsageRow.tenant, UsageRow.idempotency_key, UsageRow.cost_nanos).where(UsageRow.tenant.in_(tenants))
            )
            stored: dict[str, str] = {}
            spent: dict[str, int] = {t: 0 for t in tenants}
            duplicates = 0
            for tenant, key, cost in rows:
                duplicates += key in stored
                stored[key] = tenant
                spent[tenant] += cost
            month = datetime.now(timezone.utc).strftime("%Y-%m")
            used = dict((await conn.execute(
                select(BudgetRow.tenant, BudgetRow.used_nanos).where(BudgetRow.tenant.in_(tenants), BudgetRow.month == month)
            )).all())
    finally:
        await engine.dispose()
    lost = sum(1 for key, tenant in outcome.acked.items() if stored.get(key) != tenant)
    drift = sum(1 for t in tenants if used.get(t, 0) != spent[t])
    over = sum(1 for t in tenants if spent[t] > budgets[t])
    return {"stored": len(stored), "lost": lost, "duplicated": duplicates, "budget_drift_tenants": drift,
            "overspent_tenants": over}


# -- the original design --------------------------------------------------------------------------
async def original(database_url: str, args) -> tuple[Outcome, float, dict]:
    from actors.ledger.prices import default_catalog

    price = default_catalog().lookup(MODEL)
    one = (INPUT * price.input + OUTPUT * price.output)
    engine = create_engine(database_url)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    tenants = tenant_names("original", args.tenants)
    budgets = {t: a / 1e9 for t, a in budgets_for(tenants, round(one * 1e9), args.tight_fit).items()}
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    async with sessions() as session:
        session.add_all([OriginalBudget(tenant=t, budget_amount=a) for t, a in budgets.items()])
        await session.commit()

    async def check_budget(tenant: str, cost: float) -> bool:
        async with sessions() as session:
            budget = (await session.execute(select(OriginalBudget).where(OriginalBudget.tenant == tenant))).scalar_one_or_none()
            return budget is None or budget.current_usage + cost <= budget.budget_amount

    async def update_budget(tenant: str, cost: float) -> None:
        async with sessions() as session:
            budget = (await session.execute(select(OriginalBudget).where(OriginalBudget.tenant == tenant))).scalar_one_or_none()
            if budget:
                budget.current_usage += cost
                if budget.current_usage / budget.budget_amount >= budget.alert_threshold and not budget.alert_sent:
                    budget.alert_sent = True
                await session.commit()

    async def send(tenant: str, keys: list[str]) -> bool:
        [key] = keys
        if not await check_budget(tenant, one):
            return False
        async with sessions() as session:
            session.add(OriginalUsage(tenant=tenant, model=MODEL, input_tokens=INPUT, output_tokens=OUTPUT, cost=one, key=key))
            await session.commit()
        await update_budget(tenant, one)
        return True

    outcome, elapsed = await drive(args.workers, args.duration, args.max_records, 1, send, tenants)
    async with engine.connect() as conn:
        counts = dict((await conn.execute(
            select(OriginalUsage.tenant, func.count()).where(OriginalUsage.tenant.in_(tenants)).group_by(OriginalUsage.tenant)
        )).all())
        usage = dict((await conn.execute(
            select(OriginalBudget.tenant, OriginalBudget.current_usage).where(OriginalBudget.tenant.in_(tenants))
        )).all())
        stored_keys = {k for (k,) in await conn.execute(select(OriginalUsage.key).where(OriginalUsage.tenant.in_(tenants)))}
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)
    await engine.dispose()
    audit = {
        "stored": len(stored_keys),
        "lost": sum(1 for k in outcome.acked if k not in stored_keys),
        "duplicated": 0,
        # Budget increments lost to the read-modify-write race, in records.
        "lost_budget_updates": sum(round(counts.get(t, 0) - usage.get(t, 0.0) / one) for t in tenants),
        "budget_drift_tenants": sum(1 for t in tenants if abs(counts.get(t, 0) * one - usage.get(t, 0.0)) > one / 2),
        "overspent_tenants": sum(1 for t in tenants if counts.get(t, 0) * one > budgets[t] * (1 + 1e-9)),
    }
    return outcome, elapsed, audit


def line(path: str, outcome: Outcome, elapsed: float, audit: dict, batch: int, args) -> dict[str, Any]:
    return {
        "bench": "ledger",
        "path": path,
        "batch": batch,
        "workers": args.workers,
        "tenants": args.tenants,
        "seconds": round(elapsed, 2),
        "acknowledged": len(outcome.acked),
        "records_per_s": round(len(outcome.acked) / elapsed, 1),
        "refused_over_budget": outcome.refused,
        "errors": outcome.errors,
        "call_p50_ms": round(percentile(outcome.latencies, 0.5) or 0, 2),
        "call_p99_ms": round(percentile(outcome.latencies, 0.99) or 0, 2),
        **audit,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paths", default="original,http_single,http_batch,actor")
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--actor-callers", type=int, default=256,
                        help="concurrent callers of the actor client (ingress replicas and flow runners have many)")
    parser.add_argument("--tenants", type=int, default=20)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--tight-fit", type=int, default=50, help="records the tight budgets can pay for")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--max-records", type=int, default=400_000)
    parser.add_argument("--database-url")
    args = parser.parse_args()
    paths = args.paths.split(",")
    database = bench_database(args.database_url)
    results: dict[str, dict] = {}
    with raytenant_service(database) as urls:
        url = urls[0]
        if "original" in paths:
            outcome, elapsed, audit = asyncio.run(original(database, args))
            results["original"] = line("original", outcome, elapsed, audit, 1, args)
            emit(results["original"])
        for path, batch in (("http_single", 1), ("http_batch", args.batch)):
            if path in paths:
                outcome, elapsed, tenants, budgets = asyncio.run(shipped_http(url, args, batch, path))
                audit = asyncio.run(audit_shipped(database, outcome, tenants, budgets))
                results[path] = line(path, outcome, elapsed, audit, batch, args)
                emit(results[path])
        if "actor" in paths:
            outcome, elapsed, tenants, budgets = asyncio.run(shipped_actor(database, args))
            audit = asyncio.run(audit_shipped(database, outcome, tenants, budgets))
            results["actor"] = line("actor", outcome, elapsed, audit, 1, args)
            emit(results["actor"])
    base = results.get("original")
    for path in ("http_single", "http_batch", "actor"):
        mine = results.get(path)
        if base and mine:
            emit({
                "bench": "ledger_ratio", "path": path,
                "records_per_s": mine["records_per_s"], "original_records_per_s": base["records_per_s"],
                "ratio_vs_original": round(mine["records_per_s"] / max(1e-9, base["records_per_s"]), 2),
                "target_ratio": 10.0,
                "overspent_tenants": mine["overspent_tenants"], "lost": mine["lost"] + mine["budget_drift_tenants"],
                "original_overspent_tenants": base["overspent_tenants"],
                "original_lost_budget_updates": base["lost_budget_updates"],
            })


if __name__ == "__main__":
    main()
