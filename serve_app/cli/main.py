"""`raytenant`: run the service, mint tokens, migrate the database."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from serve_app.auth import MAX_TTL, DEFAULT_SCOPES, Tokens, new_operator_token
from serve_app.cli.balancer import balancer_port
from storage.engine import data_dir, database_url, is_sqlite, private_file

DEMO_TENANT = "demo"


def operator_token(explicit: str | None = None, *, create: bool = False) -> str:
    """RAYTENANT_OPERATOR_TOKEN, else the one `raytenant run` saved in the data folder (0600)."""
    token = explicit or os.environ.get("RAYTENANT_OPERATOR_TOKEN")
    if token:
        return token
    path = data_dir() / "operator_token"
    if path.exists():
        return path.read_text().strip()
    if not create:
        raise SystemExit("no operator token: set RAYTENANT_OPERATOR_TOKEN or start `raytenant run` once")
    token = new_operator_token()
    private_file(path).write_text(token + "\n")  # 0600 before the token is in it
    return token


def _key_ring(url: str | None = None):
    """The deployment's signing keys, read from its database (the first one generated if none)."""
    from serve_app.auth import KeyRing
    from serve_app.signing_keys import SigningKeys, ensure_first_key
    from storage.credentials import CredentialsStore
    from storage.engine import create_engine

    async def load() -> KeyRing:
        engine = create_engine(url or database_url())
        try:
            ring = KeyRing()
            keys = SigningKeys(CredentialsStore(engine), ring)
            await ensure_first_key(keys.store)
            await keys.refresh()
            return ring
        finally:
            await engine.dispose()

    try:
        return asyncio.run(load())
    except Exception as error:  # noqa: BLE001 - no database here: a legacy token, and say so
        print(f"warning: signing keys not readable ({type(error).__name__}); minting with the legacy secret, "
              "which RAYTENANT_ACCEPT_LEGACY_TOKENS=0 refuses", file=sys.stderr)
        return None


def _tenant_state(tenant: str, url: str | None = None) -> str | None:
    """The tenant's state in the deployment's database, its record created first when the
    deployment creates tenants on first mint; None when it has no record (or no database is here)."""
    from storage.engine import create_engine
    from storage.tenants import TenantStore

    async def look() -> str | None:
        engine = create_engine(url or database_url())
        try:
            store = TenantStore(engine)
            auto = os.environ.get("RAYTENANT_AUTO_CREATE_TENANTS", "1") != "0"
            found = await (store.ensure(tenant) if auto else store.get(tenant))
            return found.get("state") if found else None
        finally:
            await engine.dispose()

    try:
        return asyncio.run(look())
    except Exception as error:  # noqa: BLE001 - no database here: the service checks the tenant at use
        print(f"warning: tenant records not readable ({type(error).__name__})", file=sys.stderr)
        return "unknown"


def cmd_token(args: argparse.Namespace) -> int:
    from serve_app.auth import valid_tenant

    if valid_tenant(args.tenant):
        state = _tenant_state(args.tenant)
        if state != "active" and state != "unknown":
            print(f"error: tenant {args.tenant!r} " + ("is suspended" if state else "does not exist; "
                  "create it with `raytenant tenant create`"), file=sys.stderr)
            return 2
    tokens = Tokens(operator_token(args.operator_token), os.environ.get("RAYTENANT_JWT_SECRET", ""),
                    max_ttl=int(os.environ.get("RAYTENANT_MAX_TOKEN_TTL", MAX_TTL)), ring=_key_ring())
    scopes = args.scopes.split(",") if args.scopes else list(DEFAULT_SCOPES)
    try:
        token, exp = tokens.mint(args.tenant, user=args.user, engagement=args.engagement, scopes=scopes, ttl=args.ttl)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(token)
    print(f"# tenant={args.tenant} expires={time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(exp))}", file=sys.stderr)
    return 0


def cmd_tenant(args: argparse.Namespace) -> int:
    """`raytenant tenant create|list|show|suspend|resume|delete|export|import`: the running
    service's /v1/admin/tenants routes, with the operator token. Export writes JSON lines to
    stdout (or --file); import reads them from --file (or stdin)."""
    import httpx

    headers = {"Authorization": f"Bearer {operator_token(args.operator_token)}"}
    base = f"{args.url.rstrip('/')}/v1/admin/tenants"
    needs_name = args.action not in ("list", "import")
    if needs_name and not args.name:
        print(f"error: `tenant {args.action}` needs a tenant name", file=sys.stderr)
        return 2
    with httpx.Client(headers=headers, timeout=args.timeout) as client:
        if args.action == "export":
            with client.stream("GET", f"{base}/{args.name}/export") as response:
                if response.status_code != 200:
                    response.read()
                    return _answer(response)
                out = open(args.file, "w", encoding="utf-8") if args.file else sys.stdout
                try:
                    for line in response.iter_lines():
                        out.write(line + "\n")
                finally:
                    if args.file:
                        out.close()
            return 0
        if args.action == "import":
            body = Path(args.file).read_bytes() if args.file else sys.stdin.buffer.read()
            return _answer(client.post(f"{base}/import", content=body, headers={"Content-Type": "application/x-ndjson"}))
        calls = {
            "create": lambda: client.post(base, json={"tenant": args.name}),
            "list": lambda: client.get(base, params={"after": args.after or "", "limit": args.limit}),
            "show": lambda: client.get(f"{base}/{args.name}"),
            "suspend": lambda: client.post(f"{base}/{args.name}/suspend"),
            "resume": lambda: client.post(f"{base}/{args.name}/resume"),
            "delete": lambda: client.delete(f"{base}/{args.name}"),
        }
        return _answer(calls[args.action]())


def _answer(response: Any) -> int:
    """Print the service's JSON answer; exit 0 on success, 1 on a refusal (printed to stderr)."""
    try:
        body = response.json()
    except ValueError:
        body = {"error": {"code": "http_error", "message": response.text[:500]}}
    print(json.dumps(body, indent=2), file=sys.stdout if response.is_success else sys.stderr)
    return 0 if response.is_success else 1


def cmd_keys(args: argparse.Namespace) -> int:
    """`raytenant keys list|rotate`: the signing keys in the deployment's database (never their
    secrets). Replicas load a new key within a second; it signs from a few seconds later."""
    from serve_app.signing_keys import public_view, rotate
    from storage.credentials import CredentialsStore, audit_row
    from storage.engine import create_engine

    async def act() -> Any:
        engine = create_engine(args.url or database_url())
        try:
            store = CredentialsStore(engine)
            if args.action == "rotate":
                retire_after = args.retire_after if args.retire_after is not None else int(
                    os.environ.get("RAYTENANT_MAX_TOKEN_TTL", MAX_TTL))
                key = await rotate(store, retire_after)
                await store.audit([audit_row("operator:cli", "rotate_keys", None, "ok", kid=key["kid"],
                                             retire_after=retire_after)])
                return key
            return [public_view(row, time.time()) for row in await store.keys()]
        finally:
            await engine.dispose()

    if args.retire_after is not None and args.retire_after < 0:
        print("error: --retire-after must be >= 0", file=sys.stderr)
        return 2
    print(json.dumps(asyncio.run(act()), indent=2))
    return 0


def cmd_loadtest(args: argparse.Namespace) -> int:
    from serve_app.cli.launcher import configure_environment, metrics_enabled

    configure_environment()
    import ray

    from serve_app.cli.loadtest import LoadConfig, run

    try:
        mix = {k: float(v) for k, v in (part.split("=", 1) for part in args.mix.split(","))} if args.mix else None
        config = LoadConfig(url=args.url.rstrip("/"), operator_token=operator_token(args.operator_token),
                            workers=args.workers, tenants=args.tenants, connections=args.connections, rate=args.rate,
                            duration=args.duration, allow_remote=args.allow_remote, **({"mix": mix} if mix else {}))
        config.check()
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    started = not ray.is_initialized()
    if started:
        with metrics_enabled():
            ray.init(address=args.address, namespace="raytenant", log_to_driver=False)
    try:
        report = run(config, args.out, args.png)
    finally:
        if started:
            ray.shutdown()
    print(json.dumps({k: report[k] for k in ("throughput_per_s", "total_ops", "total_errors", "events", "nodes")}))
    print(f"report: {args.out}" + (f", plot: {args.png}" if args.png else ""))
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    from storage.migrate import downgrade, upgrade

    url = args.url or database_url()
    (upgrade if args.action == "upgrade" else downgrade)(url, args.revision)
    print(f"database {args.action}d to {args.revision}: {url.split('@')[-1]}")
    return 0


async def demo(base_url: str, token: str) -> dict[str, Any]:
    """Show the service working: a socket subscribes, an event is published over HTTP and arrives."""
    import httpx
    import websockets

    ws_url = base_url.replace("http", "ws", 1) + "/v1/ws?flow_id=demo-flow"
    async with websockets.connect(ws_url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        hello = json.loads(await ws.recv())
        await ws.recv()  # subscription_confirmed
        started = time.perf_counter()
        async with httpx.AsyncClient() as client:
            response = await client.post(
                f"{base_url}/v1/events",
                json={"type": "flow_update", "flow_id": "demo-flow", "data": {"status": "running", "progress": 42}},
                headers={"Authorization": f"Bearer {token}"},
            )
            response.raise_for_status()
        event = json.loads(await asyncio.wait_for(ws.recv(), 10))
        latency_ms = (time.perf_counter() - started) * 1000
        async with httpx.AsyncClient() as client:  # an LLM call's usage, priced from the catalog
            usage = await client.post(
                f"{base_url}/v1/costs/usage",
                json={"model": "gpt-4o-mini", "input_tokens": 1200, "output_tokens": 300, "agent": "demo"},
                headers={"Authorization": f"Bearer {token}"},
            )
            usage.raise_for_status()
            flow = await demo_flow(client, base_url, token)
            summary = await client.get(f"{base_url}/v1/costs/summary", headers={"Authorization": f"Bearer {token}"})
    return {"connection": hello, "published": response.json(), "received": event, "round_trip_ms": round(latency_ms, 1),
            "usage": usage.json(), "spend_30d": summary.json()["total_cost"], "flow": flow}


async def demo_flow(client: Any, base_url: str, token: str, timeout: float = 120.0) -> dict[str, Any]:
    """A discovery flow on the bundled sample inventory, run by the crew on the offline LLM."""
    from crews.samples import sample_inventory

    sample = sample_inventory()
    headers = {"Authorization": f"Bearer {token}"}
    created = await client.post(f"{base_url}/v1/flows", headers=headers, json={
        "name": sample["name"], "kind": "discovery", "data": sample["data"], "target_schema": sample["target_schema"]})
    created.raise_for_status()
    flow_id = created.json()["flow_id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        flow = (await client.get(f"{base_url}/v1/flows/{flow_id}", headers=headers)).json()
        if flow["status"] not in ("initialized", "running"):
            return flow
        await asyncio.sleep(0.2)
    return flow


def run_service(args: argparse.Namespace, stop: threading.Event | None = None) -> int:
    """Local Ray + Serve + embedded database. Stops what it started on Ctrl-C (or when `stop` is set)."""
    from serve_app.cli.launcher import configure_environment

    configure_environment(direct_ingress=not args.proxy)
    from storage.migrate import upgrade

    url = database_url()
    upgrade(url)
    token = operator_token(create=True)

    import ray
    from ray import serve

    from serve_app.cli.balancer import Balancer, BalancerThread, serve_targets
    from serve_app.deployment import APP_NAME
    from serve_app.cli.launcher import budget_connections, deploy, start_ray
    from serve_app.settings import Settings

    settings = {"database_url": url, "operator_token": token, "hub_shards": args.shards}
    connections = budget_connections(Settings.from_env(**settings), args.replicas)
    balancer: BalancerThread | None = None
    started_ray = not ray.is_initialized()
    context = start_ray(num_cpus=args.num_cpus, dashboard=not args.no_dashboard) if started_ray else None
    try:
        urls = deploy(settings, host=args.host, port=args.port, num_replicas=args.replicas)
        if args.replicas > 1 and len(urls) > 1:  # one address for clients in front of the replicas
            balancer = BalancerThread(Balancer(serve_targets(args.host, args.port), host=args.host,
                                               port=args.balancer_port))
            urls = [balancer.start()] + urls
        tenant_token, _ = Tokens(token).mint(DEMO_TENANT, user="demo-user")
        dashboard = getattr(context, "dashboard_url", None) if context is not None else None
        print()
        print(f"raytenant is running ({'direct ingress' if len(urls) > 1 else 'Serve proxy'})")
        print(f"  HTTP + WebSocket : {urls[0]}   (WebSocket: {urls[0].replace('http', 'ws', 1)}/v1/ws)")
        if balancer is not None:
            print(f"                     balanced over {args.replicas} replicas: {', '.join(urls[1:-1])}")
        if not is_sqlite(url):
            print(f"  database pool    : at most {connections} connections in all (docs/operations.md)")
        if len(urls) > 1:
            print(f"  via Serve proxy  : {urls[-1]}")
        print(f"  web console      : {urls[0]}/   (sign in with the demo tenant token below)")
        print(f"  Ray dashboard    : http://{dashboard}" if dashboard else "  Ray dashboard    : (disabled)")
        print(f"  database         : {url.split('@')[-1]}")
        print(f"  operator token   : {token}")
        print(f"  demo tenant token: {tenant_token}")
        result = asyncio.run(demo(urls[0], tenant_token))
        print(f"  demo             : published seq {result['published']['seqs'][0]} for tenant "
              f"{result['connection']['tenant']}, received over WebSocket in {result['round_trip_ms']} ms")
        print(f"                     {json.dumps(result['received'])}")
        print(f"  cost ledger      : gpt-4o-mini 1200 in / 300 out = ${result['usage']['cost']:.6f}; "
              f"tenant spend over 30 days ${result['spend_30d']:.6f}")
        flow = result["flow"]
        print(f"  discovery flow   : {flow['flow_id']} {flow['status']} ({flow['progress']} %)")
        for phase in flow["phases"]:
            if phase in flow["results"]:
                print(f"    {phase:<22} {flow['results'][phase]['summary']}")
        if args.check:
            return 0
        print("\nPress Ctrl-C to stop.")
        stop = stop or threading.Event()
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            signal.signal(signal.SIGINT, lambda *_: stop.set())
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
        stop.wait()
        print("stopping...")
        return 0
    finally:
        if balancer is not None:
            balancer.stop()
        try:
            serve.delete(APP_NAME)
            from actors.ledger.core import KIND as LEDGER_KIND
            from actors.event_hub.core import KIND
            from actors.flows.options import KIND as FLOW_KIND
            from actors.learning.core import KIND as LEARNING_KIND
            from actors.mailbox.core import KIND as MAILBOX_KIND
            from actors.substrate.placement import kill_all

            kill_all(KIND, args.shards)
            kill_all(LEDGER_KIND, int(os.environ.get("RAYTENANT_LEDGER_SHARDS", 1)))
            kill_all(LEARNING_KIND, int(os.environ.get("RAYTENANT_LEARNING_SHARDS", 1)))
            kill_all(MAILBOX_KIND, int(os.environ.get("RAYTENANT_MAILBOX_SHARDS", 1)))
            kill_all(FLOW_KIND, int(os.environ.get("RAYTENANT_FLOW_SHARDS", 1)))
            from actors.revocations.core import KIND as REVOCATION_KIND

            kill_all(REVOCATION_KIND, int(os.environ.get("RAYTENANT_REVOCATION_SHARDS", 1)))
            if started_ray:
                serve.shutdown()
        finally:
            if started_ray:
                ray.shutdown()


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="raytenant", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run locally: Ray, Serve and the embedded SQLite database")
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=8000, help="the Serve proxy port")
    run.add_argument("--shards", type=int, default=int(os.environ.get("RAYTENANT_HUB_SHARDS", 1)))
    run.add_argument("--replicas", type=int, default=1,
                     help="ingress replicas; with more than one, a balancer in front of them (--balancer-port)")
    run.add_argument("--balancer-port", type=int, default=balancer_port(),
                     help="where the balancer over several replicas listens (RAYTENANT_BALANCER_PORT)")
    run.add_argument("--num-cpus", type=int, default=None)
    run.add_argument("--proxy", action="store_true", help="serve through the Serve proxy instead of direct ingress")
    run.add_argument("--no-dashboard", action="store_true")
    run.add_argument("--check", action="store_true", help="start, run the demo, stop (for smoke tests)")
    run.set_defaults(func=run_service)

    token = commands.add_parser("token", help="mint a tenant token with the operator token")
    token.add_argument("--tenant", required=True)
    token.add_argument("--user")
    token.add_argument("--engagement")
    token.add_argument("--scopes", help="comma-separated; default: every tenant scope but costs:admin")
    token.add_argument("--ttl", type=int, default=24 * 3600, help="seconds")
    token.add_argument("--operator-token")
    token.set_defaults(func=cmd_token)

    keys = commands.add_parser("keys", help="list or rotate the signing keys of tenant tokens")
    keys.add_argument("action", choices=["list", "rotate"])
    keys.add_argument("--retire-after", type=int, default=None,
                      help="seconds the earlier keys keep verifying after the new one signs (default: the max token TTL)")
    keys.add_argument("--url", help="default: DATABASE_URL or the embedded SQLite file")
    keys.set_defaults(func=cmd_keys)

    tenant = commands.add_parser("tenant", help="create, list, show, suspend, resume, delete, export or import tenants")
    tenant.add_argument("action", choices=["create", "list", "show", "suspend", "resume", "delete", "export", "import"])
    tenant.add_argument("name", nargs="?")
    tenant.add_argument("--url", default="http://127.0.0.1:8000", help="the running service")
    tenant.add_argument("--file", help="export: write here (default stdout); import: read from here (default stdin)")
    tenant.add_argument("--after", help="list: the page after this name")
    tenant.add_argument("--limit", type=int, default=100, help="list: tenants per page (at most 500)")
    tenant.add_argument("--timeout", type=float, default=120.0)
    tenant.add_argument("--operator-token")
    tenant.set_defaults(func=cmd_tenant)

    load = commands.add_parser("loadtest", help="drive load from Ray tasks spread over the cluster's nodes")
    load.add_argument("--url", default="http://127.0.0.1:8000", help="the service (loopback unless --allow-remote)")
    load.add_argument("--address", default=None, help="Ray cluster address (default: the running one, else local)")
    load.add_argument("--operator-token")
    load.add_argument("--workers", type=int, default=2, help="client worker tasks, spread over the nodes")
    load.add_argument("--tenants", type=int, default=8)
    load.add_argument("--connections", type=int, default=40, help="WebSocket connections in all")
    load.add_argument("--rate", type=float, default=100.0, help="HTTP operations per second in all")
    load.add_argument("--duration", type=float, default=30.0, help="seconds (at most 600)")
    load.add_argument("--mix", help="operation weights, e.g. usage=0.4,publish=0.4,recommend=0.19,flow=0.01")
    load.add_argument("--out", default="loadtest.json")
    load.add_argument("--png", default="loadtest.png")
    load.add_argument("--allow-remote", action="store_true")
    load.set_defaults(func=cmd_loadtest)

    db = commands.add_parser("db", help="database migrations")
    db.add_argument("action", choices=["upgrade", "downgrade"])
    db.add_argument("revision", nargs="?", default=None)
    db.add_argument("--url", help="default: DATABASE_URL or the embedded SQLite file")
    db.set_defaults(func=cmd_db)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.func is cmd_db and args.revision is None:
        args.revision = "head" if args.action == "upgrade" else "base"
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
