"""Credentials as an operator runs them: tokens carry jti/iat/kid and are signed by a key ring apart
from the operator token; revocations by token or by issue time reach every replica within a
second through the revocation shards' epoch; key rotation under live traffic refuses nothing; the
audit log records admin actions and refused revoked tokens. On PostgreSQL and SQLite."""
from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timedelta, timezone

import jwt
import pytest
import websockets

from actors.revocations.core import RevocationCore, RevocationOptions
from serve_app.cli import main as cli
from serve_app.auth import AuthError, KeyRing, SigningKey, Tokens
from serve_app.client import AsyncClient
from serve_app.runtime import Runtime
from storage.credentials import CredentialsStore
from storage.engine import create_engine
from tests.conftest import LiveServer, settings_for
from tests.http_support import refusal, refused
from tests.wsutil import connect, recv

OP = "op-secret"


def ring(*keys: SigningKey) -> KeyRing:
    return KeyRing(keys)


def test_tokens_carry_jti_iat_kid_and_verify_only_with_their_key():
    now = time.time()
    old = SigningKey("k-old", "a" * 64, now - 100, retire_at=now + 50)
    new = SigningKey("k-new", "b" * 64, now + 10)  # known, not signing yet
    tokens = Tokens(OP, ring=ring(old, new), accept_legacy=False)
    token, _ = tokens.mint("acme", now=now)
    header, claims = jwt.get_unverified_header(token), tokens.verify(token)
    assert header["kid"] == "k-old" == claims.kid and len(claims.jti) == 32 and abs(claims.iat - now) < 1
    later, _ = tokens.mint("acme", now=now + 11)
    assert jwt.get_unverified_header(later)["kid"] == "k-new"
    assert tokens.verify(later).kid == "k-new"
    # The operator token does not sign: a token forged with the secret derived from it is refused.
    forged, _ = Tokens(OP).mint("acme")
    with pytest.raises(AuthError, match="key id"):
        tokens.verify(forged)
    assert Tokens(OP).verify(forged).tenant == "acme"  # accepted only where legacy tokens are
    # A token naming a key this process does not know asks for a refresh and is refused meanwhile.
    asked = []
    other = Tokens(OP, ring=ring(SigningKey("k-x", "c" * 64, now - 1)))
    stranger, _ = other.mint("acme")
    tokens.unknown_key = asked.append
    with pytest.raises(AuthError):
        tokens.verify(stranger)
    assert asked == ["k-x"]
    # Once its key retires, a cached token is refused too.
    tokens.ring.replace([SigningKey("k-old", "a" * 64, now - 100, retire_at=now - 1), new])
    with pytest.raises(AuthError) as retired:
        tokens.verify(token)
    assert retired.value.code == "key_retired"
    # A revocation applies to cached tokens at once.
    tokens.revoked = lambda c: c.tenant == "acme"
    with pytest.raises(AuthError) as revoked:
        tokens.verify(later)
    assert revoked.value.code == "token_revoked" and revoked.value.claims.tenant == "acme"


@pytest.fixture
async def store(db_url):
    engine = create_engine(db_url)
    yield CredentialsStore(engine)
    await engine.dispose()


async def test_a_revocation_shard_serves_changes_and_reloads_after_a_restart(store, tenant):
    options = RevocationOptions(max_ttl=3600)
    core = RevocationCore(store, 0, 1, options)
    first = await core.changes("", 0, None)
    assert first["full"]
    jti = "ab" * 16
    await core.revoke(tenant, jti, None)
    await core.revoke(tenant, None, time.time())
    step = await core.changes("", first["epoch"], first["incarnation"])
    assert not step["full"] and [t for t, _ in step["changes"]] == [tenant, tenant]
    with pytest.raises(Exception) as future:
        await core.revoke(tenant, None, time.time() + 60)
    assert future.value.code == "invalid_issued_before"
    # A restarted shard (new incarnation) reloads what is in force from storage.
    again = RevocationCore(store, 0, 1, options)
    whole = await again.changes("", step["epoch"], step["incarnation"])
    assert whole["full"] and jti in whole["tenants"][tenant]["jtis"] and whole["tenants"][tenant]["before"] > 0
    # A shard owns only its tenants.
    other = RevocationCore(store, 1, 2, options)
    from actors.substrate.placement import shard_for
    assert (tenant in (await other.changes("", 0, None))["tenants"]) == (shard_for(tenant, 2) == 1)


@pytest.fixture
async def two_replicas(ray_session, db_url, backend):
    settings = settings_for(db_url, backend, actor_prefix=f"test-{backend}-cred-", accept_legacy_tokens=False)
    async with LiveServer(Runtime(settings)) as one, LiveServer(Runtime(settings)) as two:
        yield one, two


async def _within(check, seconds: float = 1.0) -> float:
    """How long until `check()` holds, failing after `seconds`."""
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < seconds, "not within the deadline"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def test_revocations_reach_every_replica_within_a_second(two_replicas, tenant):
    one, two = two_replicas
    async with one.client() as op, two.client() as op_two:
        minted, keep = await op.tokens.mint(tenant), await op.tokens.mint(tenant)
        async with AsyncClient(one.url, minted["token"]) as as_one, AsyncClient(two.url, minted["token"]) as as_two, \
                AsyncClient(one.url, keep["token"]) as kept_one, AsyncClient(two.url, keep["token"]) as kept_two, \
                AsyncClient(one.url, operator_token=keep["token"]) as posing:
            for rt in (as_one, as_two):
                await rt.events.replay()
            in_an_hour = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
            for revocation, code in (({"jti": "nope"}, "invalid_jti"),
                                     ({"jti": minted["jti"], "issued_before": 1}, "invalid_revocation"),
                                     ({"issued_before": in_an_hour}, "invalid_issued_before"),
                                     ({"issued_before": "yesterday"}, "invalid_issued_before"), ({}, "invalid_revocation"),
                                     ({"issued_before": -1e12}, "invalid_issued_before"),
                                     ({"issued_before": "0001-01-01T00:00:00+01:00"}, "invalid_issued_before")):
                await refused(op.admin.revoke(tenant, **revocation), 422, code)
            await refused(posing.admin.revoke(tenant, jti=minted["jti"]), 401, "operator_token_required")
            await refused(op.tokens.mint(tenant, user="u" * 201), 422, "invalid_claims")
            await as_two.events.replay()  # nothing was revoked
            open_sockets = [await connect(s.ws_url, minted["token"]) for s in (one, two)]
            kept_socket = await connect(two.ws_url, keep["token"])
            for ws in (*open_sockets, kept_socket):
                assert (await recv(ws))["type"] == "connection_established"
            await op.admin.revoke(tenant, jti=minted["jti"])
            for ws in open_sockets:  # sockets it opened before close on every replica, within the second
                with pytest.raises(websockets.ConnectionClosed) as shut:
                    await recv(ws, timeout=1.0)
                assert shut.value.rcvd.code == 4001
            await kept_socket.send('{"type": "ping"}')
            assert (await recv(kept_socket))["type"] == "pong"  # another token's socket stays
            await kept_socket.close()

            async def refused_everywhere() -> bool:
                answers = [await refusal(rt.events.replay()) for rt in (as_one, as_two)]
                return answers == [(401, "token_revoked")] * 2

            assert await _within(refused_everywhere) < 1.0
            for server in (one, two):  # nor can it open a stream
                ws = await connect(server.ws_url, minted["token"])
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await recv(ws)
                assert closed.value.rcvd.code == 4001
            await kept_two.events.replay()  # only that token
            # Every token issued before now: the kept one too, and a token minted after still works.
            await asyncio.sleep(0.01)
            await op.admin.revoke(tenant, issued_before=datetime.now(timezone.utc).isoformat())

            async def kept_refused() -> bool:
                answers = [await refusal(rt.events.replay()) for rt in (kept_one, kept_two)]
                return all(answer is not None and answer[0] == 401 for answer in answers)

            await _within(kept_refused)
        await asyncio.sleep(0.01)
        fresh = await op_two.tokens.mint(tenant)
        for server in (one, two):
            async with AsyncClient(server.url, fresh["token"]) as rt:
                await rt.events.replay()
        listed = await op.admin.revocations(tenant)
        assert minted["jti"] in listed["jtis"] and listed["before"] > 0
        await asyncio.sleep(0.2)  # the refused attempts' audit rows are written in the background
        audit = await op.admin.audit(tenant=tenant)
    actions = [(e["actor"], e["action"], e["outcome"]) for e in audit["entries"]]
    assert actions.count(("operator", "mint_token", "ok")) == 3
    assert actions.count(("operator", "revoke", "ok")) == 2
    refusals = [e for e in audit["entries"] if e["outcome"] == "token_revoked"]
    assert refusals and refusals[0]["actor"] == f"tenant:{tenant}" and refusals[0]["detail"]["jti"] == minted["jti"]
    # Retried many times on two replicas, a revoked token leaves one row a minute on each at most.
    assert 1 <= len([e for e in refusals if e["detail"]["jti"] == minted["jti"]]) <= 2


async def test_key_rotation_under_live_traffic_refuses_nothing(two_replicas, tenant):
    one, two = two_replicas
    answered: list[str] = []
    stop = asyncio.Event()

    async with one.client() as op, two.client() as op_two:
        async def traffic() -> None:
            """Mints on both replicas and reads with each new token on both: a refusal raises here and
            fails the test at `await running`."""
            while not stop.is_set():
                for minter in (op, op_two):
                    token = (await minter.tokens.mint(tenant))["token"]
                    answered.append("mint")
                    for reader in (one, two):
                        async with AsyncClient(reader.url, token) as rt:
                            await rt.events.replay()
                        answered.append("replay")
                await asyncio.sleep(0.01)

        before = await op.tokens.mint(tenant)
        running = asyncio.ensure_future(traffic())
        await asyncio.sleep(0.3)
        await refused(op.admin.rotate_keys(-1), 422, "invalid_retire_after")
        rotated = await op_two.admin.rotate_keys(3600)
        assert "secret" not in json.dumps(rotated)
        await asyncio.sleep(4.5)  # past the new key's first signature, on both replicas
        stop.set()
        await running
        after = await op.tokens.mint(tenant)
        keys = (await op.admin.keys())["keys"]
        for token in (before["token"], after["token"]):
            for server in (one, two):
                async with AsyncClient(server.url, token) as rt:
                    await rt.events.replay()
    assert "mint" in answered and "replay" in answered  # traffic ran, and none of it was refused
    assert after["kid"] == rotated["kid"] != before["kid"]
    states = {k["kid"]: k["state"] for k in keys}
    assert states[after["kid"]] == "active" and states[before["kid"]] == "retiring"
    assert all("secret" not in k for k in keys)


def test_cli_mints_with_the_key_ring_and_rotates(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RAYTENANT_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert cli.main(["db", "upgrade"]) == 0
    assert cli.main(["token", "--tenant", "acme", "--operator-token", "op"]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    assert jwt.get_unverified_header(token)["kid"] == "k0"
    assert cli.main(["keys", "rotate", "--retire-after", "60"]) == 0
    rotated = capsys.readouterr().out
    assert '"state": "pending"' in rotated and "secret" not in rotated
    assert cli.main(["keys", "list"]) == 0
    listed = capsys.readouterr().out
    assert '"kid": "k0"' in listed and '"state": "retiring"' in listed
    assert cli.main(["keys", "rotate", "--retire-after", "-5"]) == 2


async def test_a_socket_closes_when_its_token_expires(live, tenant):
    ws = await connect(live.ws_url, live.token(tenant, ttl=2))
    assert (await recv(ws))["type"] == "connection_established"
    kept = await connect(live.ws_url, live.token(tenant))
    assert (await recv(kept))["type"] == "connection_established"
    started = time.monotonic()
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await recv(ws, timeout=5.0)
    assert closed.value.rcvd.code == 4001 and "expired" in closed.value.rcvd.reason
    assert time.monotonic() - started < 4.0
    await kept.send('{"type": "ping"}')
    assert (await recv(kept))["type"] == "pong"
    await kept.close()


def test_replicas_forget_revocations_once_their_tokens_expired():
    from actors.revocations.client import RevocationClient
    from actors.revocations.core import TenantRevocations

    client = RevocationClient.__new__(RevocationClient)
    client.tenants = {"a": TenantRevocations(100.0, {"j" * 32: 50.0}, 50.0), "b": TenantRevocations(0.0, {"k" * 32: 500.0}, 0.0)}
    client.prune(100.0)
    assert set(client.tenants) == {"b"} and client.revoked("b", 0.0, "k" * 32) and not client.revoked("a", 0.0, "j" * 32)
