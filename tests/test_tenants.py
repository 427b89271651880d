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
from serve_app.runtime import Runtime
from storage.engine import create_engine
from storage.migrate import upgrade
from storage.tenants import OWNED, ImportError_, TenantStore
from tests.conftest import PG_ADMIN_DSN, LiveServer, settings_for
from tests.http_support import assert_error
from tests.http_support import flow_body
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
    operator = one.operator_auth()
    store = TenantStore(create_engine(db_url))
    async with httpx.AsyncClient(timeout=30) as client:
        # Minting for an unknown tenant answers 404 here (RAYTENANT_AUTO_CREATE_TENANTS=0).
        assert_error(await client.post(f"{one.url}/v1/admin/tokens", headers=operator, json={"tenant": tenant}),
                     404, "unknown_tenant")
        created = await client.post(f"{one.url}/v1/admin/tenants", headers=operator, json={"tenant": tenant})
        assert created.status_code == 201 and created.json()["state"] == "active", created.text
        minted = (await client.post(f"{one.url}/v1/admin/tokens", headers=operator, json={"tenant": tenant})).json()
        auth = {"Authorization": f"Bearer {minted['token']}"}
        other = f"t-{uuid.uuid4().hex[:12]}"
        await client.post(f"{one.url}/v1/admin/tenants", headers=operator, json={"tenant": other})
        other_auth = one.auth(other)
        flow = await client.post(f"{one.url}/v1/flows", headers=auth, json=flow_body())
        assert flow.status_code == 202, flow.text
        flow_id = flow.json()["flow_id"]
        sockets = [await connect(s.ws_url, minted["token"]) for s in (one, two)]
        other_socket = await connect(two.ws_url, one.token(other))
        for ws in (*sockets, other_socket):
            assert (await recv(ws))["type"] == "connection_established"

        async def running() -> bool:
            return (await _flow_status(store, flow_id))["status"] == "running"

        await _eventually(running, 60)
        suspended = await client.post(f"{one.url}/v1/admin/tenants/{tenant}/suspend", headers=operator)
        assert suspended.status_code == 200 and suspended.json()["state"] == "suspended", suspended.text
        for ws in sockets:  # closed on every replica within the second
            with pytest.raises(websockets.ConnectionClosed) as shut:
                await recv(ws, timeout=10.0)
            assert shut.value.rcvd.code == 4003

        async def refused_everywhere() -> bool:
            answers = [await client.get(f"{s.url}/v1/events", headers=auth) for s in (one, two)]
            return all(a.status_code == 403 and a.json()["error"]["code"] == "tenant_suspended" for a in answers)

        await _eventually(refused_everywhere, 10.0)
        ws = await connect(two.ws_url, minted["token"])  # nor can it open a socket
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await recv(ws)
        assert closed.value.rcvd.code == 4003
        assert_error(await client.post(f"{one.url}/v1/admin/tokens", headers=operator, json={"tenant": tenant}),
                     403, "tenant_suspended")
        # Another tenant is untouched.
        await other_socket.send('{"type": "ping"}')
        assert (await recv(other_socket))["type"] == "pong"
        assert (await client.get(f"{two.url}/v1/events", headers=other_auth)).status_code == 200
        # The running flow stops at its next phase: parked as suspended with its finished phases kept.

        async def parked() -> bool:
            return (await _flow_status(store, flow_id))["status"] == "suspended"

        await _eventually(parked, 60)
        row = await _flow_status(store, flow_id)
        done_then = set(row["results"])
        assert 1 <= len(done_then) < 4
        await asyncio.sleep(1.5)  # nothing moves while suspended
        assert set((await _flow_status(store, flow_id))["results"]) == done_then
        shown = (await client.get(f"{one.url}/v1/admin/tenants/{tenant}", headers=operator)).json()
        assert shown["state"] == "suspended" and shown["figures"]["suspended_flows"] == 1
        assert shown["figures"]["connections"] == 0
        # Resume: tokens work again everywhere and the flow continues after its last finished phase.
        resumed = await client.post(f"{two.url}/v1/admin/tenants/{tenant}/resume", headers=operator)
        assert resumed.status_code == 200 and resumed.json()["flows_resumed"] == 1, resumed.text

        async def accepted_everywhere() -> bool:
            answers = [await client.get(f"{s.url}/v1/events", headers=auth) for s in (one, two)]
            return all(a.status_code == 200 for a in answers)

        await _eventually(accepted_everywhere, 10.0)
        for _ in range(600):
            final = (await client.get(f"{one.url}/v1/flows/{flow_id}", headers=auth)).json()
            if final["status"] in ("completed", "failed", "cancelled"):
                break
            await asyncio.sleep(0.2)
        assert final["status"] == "completed" and final["attempts"] == 2, final
        events = (await client.get(f"{one.url}/v1/events", headers=auth, params={"limit": 1000})).json()["events"]
        statuses = [e["data"]["status"] for e in events if e["type"] == "flow_update" and e["flow_id"] == flow_id]
        assert "suspended" in statuses and statuses[-1] == "completed"
        started_phases = [e["data"]["insight"]["phase"] for e in events if e["type"] == "agent_insight"
                          and e["flow_id"] == flow_id and e["data"]["insight"]["type"] == "phase_completed"]
        assert sorted(started_phases) == sorted(set(started_phases))  # no finished phase ran twice
        # Bad input: unknown tenants, bad names, a second create.
        for method, path in (("POST", "suspend"), ("POST", "resume")):
            assert_error(await client.request(method, f"{one.url}/v1/admin/tenants/nobody-{tenant}/{path}",
                                              headers=operator), 404, "unknown_tenant")
        assert_error(await client.get(f"{one.url}/v1/admin/tenants/nobody-{tenant}", headers=operator), 404,
                     "unknown_tenant")
        assert_error(await client.post(f"{one.url}/v1/admin/tenants", headers=operator, json={"tenant": tenant}),
                     409, "tenant_exists")
        for body in ({"tenant": "bad name"}, {"tenant": "x\n"}, {}, {"tenant": tenant, "extra": 1}, ["x"]):
            assert_error(await client.post(f"{one.url}/v1/admin/tenants", headers=operator, json=body), 422,
                         "invalid_tenant")
        assert_error(await client.post(f"{one.url}/v1/admin/tenants/{tenant}/suspend", headers=auth), 401,
                     "operator_token_required")
        listed = (await client.get(f"{one.url}/v1/admin/tenants", headers=operator, params={"limit": 500})).json()
        assert {tenant, other} <= {t["tenant"] for t in listed["tenants"]}
        assert_error(await client.get(f"{one.url}/v1/admin/tenants", headers=operator, params={"limit": 0}), 422,
                     "invalid_parameter")
    for ws in (other_socket,):
        await ws.close()
    await store.engine.dispose()


async def _populate(client: httpx.AsyncClient, server: LiveServer, tenant: str) -> dict[str, str]:
    """Something in every table a tenant owns."""
    operator = server.operator_auth()
    minted = (await client.post("/v1/admin/tokens", headers=operator,
                                json={"tenant": tenant, "scopes": ["*"], "user": "alice"})).json()
    auth = {"Authorization": f"Bearer {minted['token']}"}
    calls = [
        ("POST", "/v1/events", {"events": [{"type": "agent_insight", "data": {"n": i}} for i in range(5)]}, auth),
        ("POST", "/v1/costs/usage", {"model": MODEL, "input_tokens": 1000, "output_tokens": 200, "agent": "mapper",
                                     "idempotency_key": "k1"}, auth),
        ("POST", "/v1/costs/reservations", {"model": MODEL, "input_tokens": 10, "max_output_tokens": 10}, auth),
        ("PUT", "/v1/costs/budget", {"monthly_budget": 50}, auth),
        ("PUT", "/v1/costs/budgets/agent/mapper", {"amount": 5}, auth),
        ("PUT", f"/v1/admin/tenants/{tenant}/prices/{MODEL}", {"input_per_token": 1e-7, "output_per_token": 2e-7},
         operator),
        ("PUT", f"/v1/admin/tenants/{tenant}/limits", {"patterns": 500}, operator),
        ("POST", "/v1/learning/corrections", {"original": {"field_mapping": "a -> b"},
                                              "corrected": {"field_mapping": "a -> c"}, "context": {"table": "t"}}, auth),
        ("POST", "/v1/agents/mapper/messages", {"sender": "validator", "content": {"x": 1}}, auth),
        ("PUT", "/v1/agents/mapper/topics", {"topics": ["alerts"]}, auth),
        ("POST", "/v1/costs/usage", {"model": MODEL, "input_tokens": 10, "output_tokens": 10}, auth),
    ]
    for method, path, body, headers in calls:
        answer = await client.request(method, path, headers=headers, json=body)
        assert answer.status_code in (200, 201), (path, answer.text)
    flow = await client.post("/v1/flows", headers=auth, json=flow_body(data={"t": [{"a": 1}]}))
    assert flow.status_code == 202, flow.text
    for _ in range(300):
        if (await client.get(f"/v1/flows/{flow.json()['flow_id']}", headers=auth)).json()["status"] in (
                "completed", "failed"):
            break
        await asyncio.sleep(0.2)
    return auth


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
    async with httpx.AsyncClient(base_url=single.url, timeout=60) as client:
        auth = await _populate(client, single, tenant)  # created on first mint (the default)
        before = await store.counts(tenant)
        assert all(before[table] > 0 for table in OWNED), before
        shown = (await client.get(f"/v1/admin/tenants/{tenant}", headers=operator)).json()
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
        deleted = await client.delete(f"/v1/admin/tenants/{tenant}", headers=operator)
        assert deleted.status_code == 200, deleted.text
        assert deleted.json()["rows"] == before
        assert sum((await store.counts(tenant)).values()) == 0 and await store.get(tenant) is None
        assert_error(await client.get("/v1/events", headers=auth), 401, "token_revoked")
        assert_error(await client.get(f"/v1/admin/tenants/{tenant}", headers=operator), 404, "unknown_tenant")
        assert_error(await client.delete(f"/v1/admin/tenants/{tenant}", headers=operator), 404, "unknown_tenant")
        # Created again, the name starts clean: no events, no spend, no patterns, no limits.
        assert (await client.post("/v1/admin/tenants", headers=operator, json={"tenant": tenant})).status_code == 201
        fresh = single.auth(tenant, scopes=["*"])
        fresh_events = await client.get("/v1/events", headers=fresh)
        assert fresh_events.status_code == 200 and fresh_events.json()["head"] == 0, fresh_events.text
        month = (await client.get(f"/v1/admin/tenants/{tenant}/budget", headers=operator)).json()
        assert month.get("used", 0) == 0, month
        stats = (await client.get("/v1/learning/stats", headers=fresh)).json()
        assert stats["patterns"] == 0
        assert (await client.get("/v1/agents/mapper", headers=fresh)).json()["ready"] == 0
        renewed = (await client.get(f"/v1/admin/tenants/{tenant}", headers=operator)).json()
        assert renewed["figures"] == {"connections": 0, "month_spend_usd": 0.0, "patterns": 0, "queued_messages": 0,
                                      "running_flows": 0, "queued_flows": 0, "suspended_flows": 0, "last_seq": 0}
        assert renewed["limits"]["patterns"] != 500
        # Import over an existing tenant is refused; after a delete it brings everything back.
        assert_error(await client.post("/v1/admin/tenants/import", headers=operator, content=exported.content),
                     409, "tenant_exists")
        assert (await client.delete(f"/v1/admin/tenants/{tenant}", headers=operator)).status_code == 200
        back = await client.post("/v1/admin/tenants/import", headers=operator, content=exported.content)
        assert back.status_code == 201, back.text
        assert await store.counts(tenant) == before
        again = (await client.get(f"/v1/admin/tenants/{tenant}", headers=operator)).json()
        assert again["figures"] == figures
        token = single.auth(tenant, scopes=["*"])  # a new token sees the imported state through the shards
        assert (await client.get("/v1/events", headers=token)).json()["head"] == figures["last_seq"]
        assert (await client.get("/v1/learning/stats", headers=token)).json()["patterns"] == figures["patterns"]
        audit = (await client.get("/v1/admin/audit", headers=operator, params={"tenant": tenant})).json()["entries"]
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
