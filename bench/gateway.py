"""The LLM gateway: what it adds to a provider call, and whether a budget holds under a burst.

Ray + Serve with raytenant deployed (direct ingress, PostgreSQL when it runs here), and the
loopback OpenAI-compatible provider (tests/loopback_provider.py) in processes of its own. The
gateway forwards every call through the openai client library; the bench's callers speak plain
HTTP (aiohttp), so that the load generator's own CPU does not decide the comparison.

- Latency: `--callers` concurrent callers make `--calls` calls, alternating rounds straight to the
  provider and through the gateway; `added_p50_ms` / `added_p99_ms` are the gateway's percentiles
  minus the direct ones, measured in the same run. Callers are independent clients: each round
  starts them spread over one provider answer time (`--start staggered`, the default), so that 50
  calls stay in flight without arriving in the same millisecond. `--start synchronized` starts all
  of them at once each round: that measures a burst of `--callers` simultaneous arrivals, which a
  replica works off one request's CPU at a time (docs/costs.md has both figures).
- Budget: `--burst` concurrent calls against an operator cap that fits `--fit` calls' worst case
  (prompt bound + max_tokens); the provider holds each answer `--hold` seconds so every reservation
  is decided before any settles. `admitted` must equal `budget_fits`, `overspend_usd` and `lost`
  (admitted calls without exactly one usage record) must be 0.

    python -m bench.gateway [--callers 50] [--calls 1000] [--burst 500] [--fit 100]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid

from bench.common import OPERATOR, bench_database, emit, free_port, percentile, raytenant_service, server_process

MODEL = "gpt-4o-mini"
KEY_ENV = "RAYTENANT_BENCH_PROVIDER_KEY"
MESSAGES = [{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": "Say something short."}]
MAX_TOKENS = 64
PROVIDER_KEY = "sk-loopback-test-key"  # what tests/loopback_provider.py accepts


def token_for(tenant: str) -> str:
    from serve_app.auth import Tokens

    return Tokens(OPERATOR).mint(tenant, user="bench")[0]


async def timed_calls(base_url: str, api_key: str, callers: int, calls: int, spread_s: float = 0.0) -> list[float]:
    """aiohttp with one pre-encoded body: the openai client (and httpx under it) cost the load
    generator more CPU per call than the paths it measures, on the cores those paths share.
    Caller i makes its first call `spread_s * i / callers` seconds in, then calls back to back."""
    import aiohttp

    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    body = json.dumps({"model": MODEL, "messages": MESSAGES, "max_tokens": MAX_TOKENS}).encode()
    latencies: list[float] = []
    remaining = [calls]
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=callers * 2),
                                 timeout=aiohttp.ClientTimeout(total=60))

    async def caller(index: int) -> None:
        await asyncio.sleep(spread_s * index / callers)
        while remaining[0] > 0:
            remaining[0] -= 1
            started = time.perf_counter()
            async with http.post(f"{base_url}/chat/completions", data=body, headers=headers) as response:
                await response.read()
            latencies.append((time.perf_counter() - started) * 1000)
            if response.status != 200:
                raise RuntimeError(f"{response.status} from {base_url}")

    await asyncio.gather(*(caller(i) for i in range(callers)))
    await http.close()
    return latencies


async def latency(gateway: str, provider: str, args: argparse.Namespace) -> dict:
    token = token_for(f"bench-gw-{uuid.uuid4().hex[:6]}")
    await timed_calls(provider, PROVIDER_KEY, args.callers, args.callers * 2)  # warm both paths
    await timed_calls(gateway, token, args.callers, args.callers * 2)
    direct, through = [], []
    rounds = 4
    spread = args.provider_latency if args.start == "staggered" else 0.0
    for _ in range(rounds):
        direct += await timed_calls(provider, PROVIDER_KEY, args.callers, args.calls // rounds, spread)
        through += await timed_calls(gateway, token, args.callers, args.calls // rounds, spread)
    p50 = (percentile(through, 0.5) or 0) - (percentile(direct, 0.5) or 0)
    p99 = (percentile(through, 0.99) or 0) - (percentile(direct, 0.99) or 0)
    return {"concurrency": args.callers, "start": args.start, "calls": len(through), "direct_p50_ms": round(percentile(direct, 0.5), 2),
            "direct_p99_ms": round(percentile(direct, 0.99), 2), "gateway_p50_ms": round(percentile(through, 0.5), 2),
            "gateway_p99_ms": round(percentile(through, 0.99), 2), "added_p50_ms": round(p50, 2),
            "added_p99_ms": round(p99, 2), "target_added_p99_ms": 15.0}


async def burst(gateway_root: str, database: str, args: argparse.Namespace) -> dict:
    from actors.ledger.prices import NANOS, default_catalog
    from crews.providers import prompt_bound
    from serve_app.client import AsyncClient, RaytenantError, async_pool

    tenant = f"bench-burst-{uuid.uuid4().hex[:6]}"
    worst = default_catalog().lookup(MODEL).cost_nanos(prompt_bound(MESSAGES), MAX_TOKENS)
    cap_nanos = args.fit * worst + worst // 2  # fits `fit` worst cases, not one more
    async with async_pool(connections=args.burst + 10) as http:
        operator = AsyncClient(gateway_root, operator_token=OPERATOR, timeout=120, http=http)
        await operator.admin.set_cap(tenant, cap_nanos / NANOS)
        catalog = default_catalog().lookup(MODEL)
        await operator.admin.set_price(tenant, f"{MODEL}-held", catalog.input, catalog.output)
        # The burst tests the budget, not the tenant's request rate (200/s on llm routes by default).
        await operator.admin.set_limits(tenant, {"requests_per_second": {"llm": 100_000}})
        rt = AsyncClient(gateway_root, token_for(tenant), timeout=120, http=http)

        async def call() -> int:
            try:
                await rt.llm.chat(f"{MODEL}-held", MESSAGES, max_tokens=MAX_TOKENS)
            except RaytenantError as error:
                return error.status
            return 200

        answers = await asyncio.gather(*(call() for _ in range(args.burst)))
        view = await operator.admin.month(tenant)
    admitted = sum(status == 200 for status in answers)
    refused = sum(status == 402 for status in answers)
    rows = await stored_records(database, tenant)
    cap_usd = cap_nanos / NANOS
    return {"concurrency": args.burst, "calls": args.burst, "admitted": admitted, "refused": refused,
            "other_status": sorted(set(answers) - {200, 402}), "budget_fits": args.fit,
            "overspend_usd": round(max(0.0, view["used"] + view["reserved"] - cap_usd), 9),
            "lost": abs(admitted - rows), "recorded": rows}


async def stored_records(database: str, tenant: str) -> int:
    from sqlalchemy import func, select

    from storage.engine import create_engine
    from storage.models import UsageRow

    engine = create_engine(database)
    try:
        async with engine.connect() as conn:
            return (await conn.execute(select(func.count()).where(UsageRow.tenant == tenant))).scalar_one()
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--callers", type=int, default=50)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--burst", type=int, default=500)
    parser.add_argument("--fit", type=int, default=100)
    parser.add_argument("--hold", type=float, default=30.0,
                        help="longer than the gateway takes to decide every call of the burst")
    parser.add_argument("--provider-latency", type=float, default=0.0,
                        help="seconds the latency phase's provider takes per answer")
    parser.add_argument("--start", choices=["staggered", "synchronized"], default="staggered",
                        help="callers' first calls spread over one provider answer time, or all at once")
    parser.add_argument("--database-url")
    args = parser.parse_args()
    os.environ[KEY_ENV] = PROVIDER_KEY  # before Ray starts: every replica reads the key from its environment
    fast_port, held_port = free_port(), free_port()
    providers = {"fast": {"base_url": f"http://127.0.0.1:{fast_port}/v1", "api_key_env": KEY_ENV, "models": [MODEL]},
                 "held": {"base_url": f"http://127.0.0.1:{held_port}/v1", "api_key_env": KEY_ENV,
                          "models": [f"{MODEL}-held"], "timeout": 120}}
    database = bench_database(args.database_url)
    with server_process(["-m", "tests.loopback_provider", str(fast_port), str(args.provider_latency)], fast_port) as fast, \
            server_process(["-m", "tests.loopback_provider", str(held_port), str(args.hold)], held_port), \
            raytenant_service(database, settings={"llm_providers": json.dumps(providers)}) as urls:
        gateway_root = urls[0]
        measured = asyncio.run(latency(f"{gateway_root}/v1/llm", f"{fast}/v1", args))
        emit({"bench": "gateway", "phase": "latency", **measured, "admitted": measured["calls"],
              "budget_fits": None, "overspend_usd": 0.0, "lost": 0})
        held = asyncio.run(burst(gateway_root, database, args))
        emit({"bench": "gateway", "phase": "budget", **held, "added_p50_ms": None, "added_p99_ms": None})


if __name__ == "__main__":
    main()
