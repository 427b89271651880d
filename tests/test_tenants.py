"""Tenants as records (issue 14 part 1), on PostgreSQL and SQLite, through real Ray and sockets:
create, list and show with figures; suspend (403 on every replica, sockets closed with 4003
within a second, a running flow parked at its next phase) and resume (the flow continues after
its last finished phase); delete (every table emptied, every shard's memory too, old tokens
refused, the name created again clean); export as JSON lines and import into an empty database
with the same figures; bad input gets a 4xx with a code and changes nothing."""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any, AsyncIterator

import asyncpg
import httpx
import pytest
import websockets

from serve_app.cli import main as cli
from serve_app.auth import valid_tenant
from serve_app.client import AsyncClient
from serve_app.runtime import Runtime
from storage.engine import create_engine
from storage.migrate import upgrade
from storage.tenants import OWNED, ImportError_, TenantStore
from tests.conftest import PG_ADMIN_DSN, LiveServer, settings_for
from tests.http_support import assert_error, flow_body, refusal, refused, wait_flow
from tests.wsutil import connect, recv

pytestmark = pytest.mark.integration
MODEL = "gpt-4o-mini"


@pytest.fixture
async def replicas(ray_session, db_url, backend) -> AsyncIterator[tuple[LiveServer, LiveServer]]:
    settings = settings_for(db_url, backend, actor_prefix=f"test-{backend}-tn-", auto_create_tenants=False,
                            llm_latency=0.15)
    async with LiveServer(Runtime(settings)) as one, LiveServer(Runtime(settings)) as two:
        yield one, two


async def _eventually(check, seconds: float) -> None:
    """Wait for `check()` to hold, failing after `seconds` (a bound against hanging, not a timing
    target: how fast suspensions propagate is measured, not asserted here)."""
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, "the change never took effect"
        await asyncio.sleep(0.02)


async def _flow_status(store: TenantStore, flow_id: str) -> dict[str, Any]:
    from sqlalchemy import select

    from storage.models import FlowRow

    async with store.engine.connect() as conn:
        row = (await conn.execute(select(FlowRow).where(FlowRow.id == flow_id))).mappings().one()
    return dict(row)


async def test_suspend_refuses_everywhere_closes_sockets_parks_flows_and_resume_continues(replicas, tenant, db_url):
    one, two = replicas
    store = TenantStore(create_engine(db_url))
    async with one.client() as op, two.client() as op_two, httpx.AsyncClient(timeout=30) as client:
        # Minting for an unknown tenant answers 404 here (RAYTENANT_AUTO_CREATE_TENANTS=0).
        await refused(op.tokens.mint(tenant), 404, "unknown_tenant")
        created = await op.admin.create_tenant(tenant)
        assert created["state"] == "active", created
        minted = await op.tokens.mint(tenant)
        other = f"t-{uuid.uuid4().hex[:12]}"
        await op.admin.create_tenant(other)
        async with AsyncClient(one.url, minted["token"]) as rt, AsyncClient(two.url, minted["token"]) as rt_two, \
                AsyncClient(one.url, operator_token=minted["token"]) as posing, two.client(other) as rt_other:
            flow_id = (await rt.flows.create(**flow_body()))["flow_id"]
            sockets = [await connect(s.ws_url, minted["token"]) for s in (one, two)]
            other_socket = await connect(two.ws_url, one.token(other))
            for ws in (*sockets, other_socket):
                assert (await recv(ws))["type"] == "connection_established"

            async def running() -> bool:
                return (await _flow_status(store, flow_id))["status"] == "running"

            await _eventually(running, 60)
            suspended = await op.admin.suspend(tenant)
            assert suspended["state"] == "suspended", suspended
            for ws in sockets:  # closed on every replica within the second
                with pytest.raises(websockets.ConnectionClosed) as shut:
                    await recv(ws, timeout=10.0)
                assert shut.value.rcvd.code == 4003

            async def refused_everywhere() -> bool:
                answers = [await refusal(r.events.replay()) for r in (rt, rt_two)]
                return answers == [(403, "tenant_suspended")] * 2

            await _eventually(refused_everywhere, 10.0)
            ws = await connect(two.ws_url, minted["token"])  # nor can it open a socket
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await recv(ws)
            assert closed.value.rcvd.code == 4003
            await refused(op.tokens.mint(tenant), 403, "tenant_suspended")
            # Another tenant is untouched.
            await other_socket.send('{"type": "ping"}')
            assert (await recv(other_socket))["type"] == "pong"
            await rt_other.events.replay()  # answered, not refused
            # The running flow stops at its next phase: parked as suspended with its finished phases kept.

            async def parked() -> bool:
                return (await _flow_status(store, flow_id))["status"] == "suspended"

            await _eventually(parked, 60)
            row = await _flow_status(store, flow_id)
            done_then = set(row["results"])
            assert 1 <= len(done_then) < 4
            await asyncio.sleep(1.5)  # nothing moves while suspended
            assert set((await _flow_status(store, flow_id))["results"]) == done_then
            shown = await op.admin.tenant(tenant)
            assert shown["state"] == "suspended" and shown["figures"]["suspended_flows"] == 1
            assert shown["figures"]["connections"] == 0
            # Resume: tokens work again everywhere and the flow continues after its last finished phase.
            resumed = await op_two.admin.resume(tenant)
            assert resumed["flows_resumed"] == 1, resumed

            async def accepted_everywhere() -> bool:
                return [await refusal(r.events.replay()) for r in (rt, rt_two)] == [None, None]

            await _eventually(accepted_everywhere, 10.0)
            final = await wait_flow(rt, flow_id, timeout=120)
            assert final["status"] == "completed" and final["attempts"] == 2, final
            events = (await rt.events.replay(limit=1000))["events"]
            statuses = [e["data"]["status"] for e in events if e["type"] == "flow_update" and e["flow_id"] == flow_id]
            assert "suspended" in statuses and statuses[-1] == "completed"
            started_phases = [e["data"]["insight"]["phase"] for e in events if e["type"] == "agent_insight"
                              and e["flow_id"] == flow_id and e["data"]["insight"]["type"] == "phase_completed"]
            assert sorted(started_phases) == sorted(set(started_phases))  # no finished phase ran twice
            # Bad input: unknown tenants, bad names, a second create.
            for action in (op.admin.suspend, op.admin.resume, op.admin.tenant):
                await refused(action(f"nobody-{tenant}"), 404, "unknown_tenant")
            await refused(op.admin.create_tenant(tenant), 409, "tenant_exists")
            for body in ({"tenant": "bad name"}, {"tenant": "x\n"}, {}, {"tenant": tenant, "extra": 1}, ["x"]):
                assert_error(await client.post(f"{one.url}/v1/admin/tenants", headers=one.operator_auth(), json=body),
                             422, "invalid_tenant")
            await refused(posing.admin.suspend(tenant), 401, "operator_token_required")
            listed = await op.admin.tenants(limit=500)
            assert {tenant, other} <= {t["tenant"] for t in listed["tenants"]}
            await refused(op.admin.tenants(limit=0), 422, "invalid_parameter")
    for ws in (other_socket,):
        await ws.close()
    await store.engine.dispose()


async def _populate(server: LiveServer, tenant: str) -> str:
    """Something in every table a tenant owns; the token it minted."""
    async with server.client() as op:
        minted = await op.tokens.mint(tenant, scopes=["*"], user="alice")
    async with AsyncClient(server.url, minted["token"], operator_token=server.runtime.settings.operator_token) as rt:
        await rt.events.publish([{"type": "agent_insight", "data": {"n": i}} for i in range(5)])
        await rt.costs.record({"model": MODEL, "input_tokens": 1000, "output_tokens": 200, "agent": "mapper",
                               "idempotency_key": "k1"})
        await rt.costs.reserve(MODEL, 10, 10)
        await rt.costs.set_budget(50)
        await rt.costs.set_level("agent", "mapper", amount=5)
        await rt.admin.set_price(tenant, MODEL, 1e-7, 2e-7)
        await rt.admin.set_limits(tenant, {"patterns": 500})
        await rt.learning.correct({"field_mapping": "a -> b"}, {"field_mapping": "a -> c"}, {"table": "t"})
        await rt.agents.send("mapper", "validator", {"x": 1})
        await rt.agents.set_topics("mapper", ["alerts"])
        await rt.costs.record({"model": MODEL, "input_tokens": 10, "output_tokens": 10})
        flow = await rt.flows.create(**flow_body(data={"t": [{"a": 1}]}))
        await wait_flow(rt, flow["flow_id"], timeout=60)
    return minted["token"]


@pytest.fixture
async def single(ray_session, db_url, backend) -> AsyncIterator[LiveServer]:
    settings = settings_for(db_url, backend, actor_prefix=f"test-{backend}-tn1-")
    async with LiveServer(Runtime(settings)) as server:
        yield server


@pytest.fixture
async def empty_url(backend, tmp_path) -> AsyncIterator[str]:
    """A freshly migrated, empty database of the same kind."""
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
        await asyncio.to_thread(upgrade, url)
        yield url
        return
    name = f"raytenant_empty_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    host = PG_ADMIN_DSN.split("://", 1)[1].rsplit("/", 1)[0]
    url = f"postgresql+asyncpg://{host}/{name}"
    try:
        await asyncio.to_thread(upgrade, url)
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_export_import_and_delete_purge_everything(single, tenant, db_url, empty_url, tmp_path):
    operator = single.operator_auth()
    store, empty = TenantStore(create_engine(db_url)), TenantStore(create_engine(empty_url))
    async with single.client() as op, httpx.AsyncClient(base_url=single.url, timeout=60) as client:
        token = await _populate(single, tenant)  # created on first mint (the default)
        before = await store.counts(tenant)
        assert all(before[table] > 0 for table in OWNED), before
        shown = await op.admin.tenant(tenant)
        figures = shown["figures"]
        assert figures["month_spend_usd"] > 0 and figures["patterns"] >= 1 and figures["queued_messages"] >= 1
        assert figures["last_seq"] >= 5 and shown["limits"]["patterns"] == 500
        exported = await client.get(f"/v1/admin/tenants/{tenant}/export", headers=operator)
        assert exported.status_code == 200 and exported.headers["content-type"].startswith("application/x-ndjson")
        lines = exported.content.splitlines()
        assert json.loads(lines[0])["tenant"] == tenant
        assert {json.loads(line)["table"] for line in lines[1:]} == set(OWNED)
        # Into an empty database: the same rows and the same figures.
        imported = await empty.import_lines(lines, valid_tenant)
        assert imported["rows"] == {t: n for t, n in before.items() if n}
        assert await empty.counts(tenant) == before
        assert (await empty.figures([tenant]))[tenant] == (await store.figures([tenant]))[tenant]
        with pytest.raises(FileExistsError):  # a second import changes nothing
            await empty.import_lines(lines, valid_tenant)
        # Bad imports are refused whole, with the line that is wrong.
        bad = [lines[:1] + [b'{"table": "events", "row": {"tenant": "someone-else"}}'],
               [b'{"format": "other"}'], lines[:1] + [b"{nope"], lines[:1] + [b'{"table": "audit_log", "row": {}}'],
               lines[:1] + [lines[1].replace(b'"tenant"', b'"tennant"', 1)],
               [lines[0].replace(tenant.encode(), b"bad name")]]
        for body in bad:
            answer = await client.post("/v1/admin/tenants/import", headers=operator, content=b"\n".join(body))
            assert answer.status_code in (409, 422), answer.text
        with pytest.raises(ImportError_):
            await TenantStore(create_engine(empty_url)).import_lines(
                [lines[0].replace(tenant.encode(), b"fresh-" + tenant.encode())] + lines[1:2], valid_tenant)
        assert sum((await empty.counts(f"fresh-{tenant}")).values()) == 0
        # Delete: every row gone, every shard forgets, old tokens refused.
        deleted = await op.admin.delete(tenant)
        assert deleted["rows"] == before
        assert sum((await store.counts(tenant)).values()) == 0 and await store.get(tenant) is None
        async with AsyncClient(single.url, token) as old:
            await refused(old.events.replay(), 401, "token_revoked")
        await refused(op.admin.tenant(tenant), 404, "unknown_tenant")
        await refused(op.admin.delete(tenant), 404, "unknown_tenant")
        # Created again, the name starts clean: no events, no spend, no patterns, no limits.
        assert (await op.admin.create_tenant(tenant))["state"] == "active"
        async with single.client(tenant, scopes=["*"]) as fresh:
            assert (await fresh.events.replay())["head"] == 0
            month = await op.admin.month(tenant)
            assert month.get("used", 0) == 0, month
            stats = await fresh.learning.stats()
            assert stats["patterns"] == 0
            assert (await fresh.agents.depth("mapper"))["ready"] == 0
        renewed = await op.admin.tenant(tenant)
        assert renewed["figures"] == {"connections": 0, "month_spend_usd": 0.0, "patterns": 0, "queued_messages": 0,
                                      "running_flows": 0, "queued_flows": 0, "suspended_flows": 0, "last_seq": 0}
        assert renewed["limits"]["patterns"] != 500
        # Import over an existing tenant is refused; after a delete it brings everything back.
        await refused(op.admin.import_tenant(exported.content), 409, "tenant_exists")
        await op.admin.delete(tenant)
        await op.admin.import_tenant(exported.content)
        assert await store.counts(tenant) == before
        again = await op.admin.tenant(tenant)
        assert again["figures"] == figures
        # A new token sees the imported state through the shards.
        async with single.client(tenant, scopes=["*"]) as later:
            assert (await later.events.replay())["head"] == figures["last_seq"]
            assert (await later.learning.stats())["patterns"] == figures["patterns"]
        audit = (await op.admin.audit(tenant=tenant))["entries"]
        actions = [e["action"] for e in audit]
        assert {"create_tenant", "export_tenant", "delete_tenant", "import_tenant"} <= set(actions)
    # The CLI drives the same routes.
    common = ["--url", single.url, "--operator-token", single.runtime.settings.operator_token]

    def cli_run(*args: str) -> int:
        return cli.main(["tenant", *args, *common])

    target = tmp_path / "export.jsonl"
    assert await asyncio.to_thread(cli_run, "export", tenant, "--file", str(target)) == 0
    assert len(target.read_text().splitlines()) == len(exported.content.splitlines())
    assert await asyncio.to_thread(cli_run, "import", "--file", str(target)) == 1  # it exists
    assert await asyncio.to_thread(cli_run, "show", f"nobody-{tenant}") == 1
    assert await asyncio.to_thread(cli_run, "suspend") == 2
    assert await asyncio.to_thread(cli_run, "create", f"cli-{tenant}") == 0
    assert await asyncio.to_thread(cli_run, "list", "--limit", "500") == 0
    assert await asyncio.to_thread(cli_run, "suspend", f"cli-{tenant}") == 0
    assert await asyncio.to_thread(cli_run, "resume", f"cli-{tenant}") == 0
    assert await asyncio.to_thread(cli_run, "delete", f"cli-{tenant}") == 0
    assert await store.get(f"cli-{tenant}") is None
    await store.engine.dispose()
    await empty.engine.dispose()


def test_cli_token_respects_the_tenant_record(tmp_path, monkeypatch, capsys):
    url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    upgrade(url)
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("RAYTENANT_OPERATOR_TOKEN", "op")
    monkeypatch.setenv("RAYTENANT_AUTO_CREATE_TENANTS", "0")
    assert cli.main(["token", "--tenant", "acme"]) == 2
    assert "does not exist" in capsys.readouterr().err
    monkeypatch.setenv("RAYTENANT_AUTO_CREATE_TENANTS", "1")
    assert cli.main(["token", "--tenant", "acme"]) == 0
    store = TenantStore(create_engine(url))

    async def suspend() -> None:
        assert (await store.get("acme"))["state"] == "active"
        await store.set_state("acme", "suspended")
        await store.engine.dispose()

    asyncio.run(suspend())
    capsys.readouterr()
    assert cli.main(["token", "--tenant", "acme"]) == 2
    assert "suspended" in capsys.readouterr().err


async def test_a_revocation_shard_reloads_suspended_tenants_after_a_restart(db_url, tenant):
    from actors.revocations.core import RevocationCore, RevocationOptions, TenantRevocations
    from storage.credentials import CredentialsStore

    engine = create_engine(db_url)
    tenants = TenantStore(engine)
    options = RevocationOptions(max_ttl=3600)
    core = RevocationCore(CredentialsStore(engine), 0, 1, options, tenants=tenants)
    first = await core.changes("", 0, None)
    await tenants.create(tenant, state="suspended")
    await core.suspend(tenant, True)
    step = await core.changes("", first["epoch"], first["incarnation"])
    assert step["changes"] == [[tenant, {"suspended": True}]]
    view = TenantRevocations()
    view.change(step["changes"][0][1])
    assert view.suspended and not view.prune(time.time())  # a suspended tenant is kept
    again = RevocationCore(CredentialsStore(engine), 0, 1, options, tenants=tenants)  # a restart
    assert (await again.changes("", 0, None))["tenants"][tenant]["suspended"] is True
    await tenants.set_state(tenant, "active")
    await again.suspend(tenant, False)
    assert tenant not in again.tenants  # nothing left to hold for it
    await engine.dispose()
