"""The real Ray Serve deployment (direct ingress and the proxy) and the `raytenant` CLI."""
from __future__ import annotations

import json
import re
import threading
import time

import httpx
import pytest
from ray import serve

from serve_app.cli import main as cli
from serve_app.auth import Tokens
from serve_app.client import AsyncClient
from serve_app.deployment import APP_NAME
from serve_app.cli.launcher import deploy
from tests.conftest import OPERATOR_TOKEN
from tests.wsutil import connect, recv, recv_until

pytestmark = pytest.mark.integration


async def test_serve_deployment_direct_ingress_and_proxy(ray_session, db_url, backend, tenant):
    settings = {"database_url": db_url, "operator_token": OPERATOR_TOKEN, "actor_prefix": f"serve-{backend}-"}
    urls = deploy(settings, port=8010)
    try:
        assert len(urls) == 2 and urls[-1] == "http://127.0.0.1:8010", urls
        direct, proxy = urls
        token, _ = Tokens(OPERATOR_TOKEN).mint(tenant)
        auth = {"Authorization": f"Bearer {token}"}
        for base in (direct, proxy):
            ws = await connect(base.replace("http", "ws") + "/v1/ws", token, flow_id="f")
            await recv_until(ws, lambda m: m["type"] == "subscription_confirmed")
            async with httpx.AsyncClient(base_url=base) as client, AsyncClient(base, token) as rt:
                assert (await client.get("/readyz")).status_code == 200
                published = await rt.events.publish({"type": "flow_update", "flow_id": "f"})
                bad = await client.post("/v1/events", content=b"[", headers=auth)
                assert bad.status_code == 400 and bad.json()["error"]["code"] == "malformed_json"
            event = await recv(ws)
            assert event["seq"] == published["seqs"][0]
            await ws.send(json.dumps({"type": "ping"}))
            assert (await recv(ws))["type"] == "pong"
            await ws.close()
        # Over its rate, a tenant is refused by the replica's edge middleware, before Serve's own
        # request handling: such an answer carries no X-Request-ID (Serve adds one to every
        # request it handles), while the admitted ones do.
        limited = tenant + "-limited"  # a tenant with no tokens leased at the default rate yet
        async with httpx.AsyncClient(base_url=direct) as client:
            async with AsyncClient(direct, operator_token=OPERATOR_TOKEN) as operator:
                await operator.admin.set_limits(limited, {"requests_per_second": {"events": 2}})
            # the refusals' headers are what is checked: raw requests
            auth = {"Authorization": f"Bearer {Tokens(OPERATOR_TOKEN).mint(limited)[0]}"}
            answers = [await client.get("/v1/events", headers=auth) for _ in range(12)]
        refused = [r for r in answers if r.status_code == 429]
        assert refused and all(r.json()["error"]["code"] == "rate_limited" for r in refused)
        assert not any("x-request-id" in r.headers for r in refused)
        assert all("x-request-id" in r.headers for r in answers if r.status_code == 200)
    finally:
        serve.delete(APP_NAME)


def test_cli_token_and_db(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RAYTENANT_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("RAYTENANT_OPERATOR_TOKEN", raising=False)
    with pytest.raises(SystemExit, match="no operator token"):
        cli.main(["token", "--tenant", "acme"])
    assert cli.main(["db", "upgrade"]) == 0
    assert (tmp_path / "raytenant.db").exists()
    assert cli.main(["db", "downgrade"]) == 0
    assert cli.main(["token", "--tenant", "acme", "--operator-token", "op", "--scopes", "events:read", "--user", "u"]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    claims = Tokens("op").verify(token)
    assert claims.tenant == "acme" and claims.scopes == ("events:read",) and claims.user == "u"
    assert cli.main(["token", "--tenant", "bad tenant", "--operator-token", "op"]) == 2


def test_cli_run_starts_shows_and_stops(ray_session, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RAYTENANT_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("RAYTENANT_OPERATOR_TOKEN", raising=False)
    assert cli.main(["run", "--check", "--port", "8011"]) == 0
    out = capsys.readouterr().out
    saved = (tmp_path / "operator_token").read_text().strip()
    assert f"operator token   : {saved}" in out
    assert "received over WebSocket" in out and '"progress": 42' in out
    assert "cost ledger      : gpt-4o-mini 1200 in / 300 out = $0.000360" in out
    assert "completed (100 %)" in out and "application_discovery  11 application(s)" in out
    assert (tmp_path / "operator_token").stat().st_mode & 0o777 == 0o600
    # Without --check it serves until told to stop: it answers while it runs, then returns.
    stop = threading.Event()
    args = cli.parser().parse_args(["run", "--port", "8011"])
    outcome: list[int] = []
    runner = threading.Thread(target=lambda: outcome.append(cli.run_service(args, stop)), daemon=True)
    runner.start()
    printed = ""
    deadline = time.monotonic() + 180
    while "Press Ctrl-C to stop." not in printed and time.monotonic() < deadline and runner.is_alive():
        printed += capsys.readouterr().out
        time.sleep(0.5)
    url = re.search(r"HTTP \+ WebSocket : (\S+)", printed).group(1)
    time.sleep(1.5)
    assert runner.is_alive() and not outcome  # still serving: nobody told it to stop
    assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    stop.set()
    runner.join(60)
    assert outcome == [0] and "stopping..." in capsys.readouterr().out


def test_start_ray_starts_its_own_ray_whatever_the_machine_points_at(tmp_path):
    """`raytenant run` (and the test session) start a Ray of their own: a CI run once joined the Ray
    another run had left on the machine (/tmp/ray/ray_current_cluster) and failed every Ray test.
    RAY_ADDRESS pointing elsewhere stands in for that leftover."""
    import os
    import subprocess
    import sys

    script = ("import ray; from serve_app.cli.launcher import start_ray; start_ray(num_cpus=1, dashboard=False); "
              "print(ray.get_runtime_context().gcs_address); ray.shutdown()")
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env,
                          cwd=os.getcwd())
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] != "127.0.0.1:1"
