"""Shared fixtures: one Ray session per run, a fresh PostgreSQL database and a SQLite file, and
in-process ingress servers on real sockets (`live`, `flows`, `gateway`; `pg_live` and `pg_flows`
for tests one database is enough for). Helpers the test modules share live in tests/*_support.py.

Integration tests run on both databases through the `db_url` fixture. A test that needs Ray or a
database is marked `integration` here, whatever its module says, so `-m "not integration"` runs
without either.
"""
from __future__ import annotations

import asyncio
import json
import os
import uuid
from typing import Any, AsyncIterator

os.environ.setdefault("CREWAI_DISABLE_TELEMETRY", "true")
os.environ.setdefault("OTEL_SDK_DISABLED", "true")
os.environ.setdefault("CREWAI_TRACING_ENABLED", "false")
os.environ.setdefault("CREWAI_DISABLE_VERSION_CHECK", "true")
# The loopback provider's key (tests/loopback_provider.py), in the environment before Ray starts so
# every actor process has it, as a deployment puts provider keys in every node's environment.
os.environ.setdefault("RAYTENANT_TEST_PROVIDER_KEY", "sk-loopback-test-key")

from serve_app.cli.launcher import configure_environment, metrics_enabled  # noqa: E402

configure_environment()

import asyncpg  # noqa: E402
import pytest  # noqa: E402
import uvicorn  # noqa: E402

from serve_app.app import create_app  # noqa: E402
from serve_app.client import AsyncClient  # noqa: E402
from serve_app.runtime import Runtime  # noqa: E402
from serve_app.settings import Settings  # noqa: E402
from storage.migrate import upgrade  # noqa: E402
from tests.http_support import LATENCY, MODEL, providers_json  # noqa: E402
from tests.loopback_provider import LoopbackProvider, ServedProvider  # noqa: E402

def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


METRICS_PORT: int | None = None  # the Prometheus port of the Ray this run started
PG_ADMIN_DSN = os.environ.get("RAYTENANT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
OPERATOR_TOKEN = "test-operator-token"


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray of the run's own (address="local": never one another run left on the machine);
    shut down only if this fixture started it."""
    import ray

    global METRICS_PORT
    started = not ray.is_initialized()
    if started:
        METRICS_PORT = _free_port()
        with metrics_enabled():
            ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="raytenant", log_to_driver=False,
                     _metrics_export_port=METRICS_PORT)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def pg_url():
    name = f"raytenant_test_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    host_part = PG_ADMIN_DSN.split("://", 1)[1].rsplit("/", 1)[0]
    url = f"postgresql+asyncpg://{host_part}/{name}"
    upgrade(url)
    yield url
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory):
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('db') / 'raytenant.db'}"
    upgrade(url)
    return url


@pytest.fixture(params=["postgresql", "sqlite"])
def backend(request) -> str:
    return request.param


@pytest.fixture
def db_url(request, backend) -> str:
    return request.getfixturevalue("pg_url" if backend == "postgresql" else "sqlite_url")


@pytest.fixture
def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def settings_for(db_url: str, backend: str, **overrides: Any) -> Settings:
    values = {
        "database_url": db_url,
        "operator_token": OPERATOR_TOKEN,
        "actor_prefix": f"test-{backend}-",
        "hub_shards": 2,  # exercise routing across shards
    }
    return Settings.from_env(**{**values, **overrides})


class LiveServer:
    """An ingress app on a real loopback socket, served by uvicorn in the test's event loop."""

    def __init__(self, runtime: Runtime, wrap: Any = None) -> None:
        """`wrap(app)` puts ASGI layers around the app, as Serve's HTTP callback does (the edge)."""
        self.runtime = runtime
        app = create_app(runtime)
        self.server = uvicorn.Server(
            # keep-alive longer than any test phase: a pooled connection the server closes while
            # the client reuses it is a ReadError (the race between httpx and uvicorn at 5 s idle)
            uvicorn.Config(wrap(app) if wrap else app, host="127.0.0.1", port=0, log_level="warning", lifespan="off",
                           timeout_keep_alive=120)
        )
        self.task: asyncio.Task | None = None

    async def __aenter__(self) -> "LiveServer":
        await self.runtime.start()
        self.task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            await asyncio.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}/v1/ws"
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.runtime.stop()
        self.server.should_exit = True
        await asyncio.wait_for(self.task, 10)

    def token(self, tenant: str, **kwargs: Any) -> str:
        return self.runtime.tokens.mint(tenant, **kwargs)[0]

    def auth(self, tenant: str, **kwargs: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(tenant, **kwargs)}"}

    def admin_auth(self, tenant: str) -> dict[str, str]:
        """A tenant token with costs:admin (the tenant's own budgets), which default tokens lack."""
        return self.auth(tenant, scopes=["*"])

    def operator_auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.runtime.settings.operator_token}"}

    def client(self, tenant: str | None = None, **kwargs: Any) -> AsyncClient:
        """The typed client (serve_app/client.py) as `tenant` (token minted with `kwargs`), with the
        operator token too: `async with live.client(tenant) as rt: await rt.costs.budget()`."""
        token = self.token(tenant, **kwargs) if tenant is not None else None
        return AsyncClient(self.url, token, operator_token=self.runtime.settings.operator_token)


@pytest.fixture
async def live(ray_session, db_url, backend) -> AsyncIterator[LiveServer]:
    """The real ingress app over real sockets, backed by real EventHub actors and the database."""
    async with LiveServer(Runtime(settings_for(db_url, backend))) as server:
        yield server


@pytest.fixture
async def flows(ray_session, db_url, backend) -> AsyncIterator[LiveServer]:
    """A live ingress with flow runners; the OfflineLLM answers after LATENCY, so a test can act mid-flow."""
    settings = settings_for(db_url, backend, actor_prefix=f"test-{backend}-fl-", flow_limit=3, llm_latency=LATENCY)
    async with LiveServer(Runtime(settings)) as server:
        yield server


@pytest.fixture
async def provider() -> AsyncIterator[ServedProvider]:
    """The loopback OpenAI-compatible provider (tests/loopback_provider.py) on a real port."""
    async with ServedProvider(LoopbackProvider(reply="The answer is forty two and nothing more")) as served:
        yield served


@pytest.fixture
async def gateway(ray_session, db_url, backend, provider) -> AsyncIterator[LiveServer]:
    """A live ingress whose gateway forwards to the loopback provider."""
    settings = settings_for(db_url, backend, llm_providers=providers_json(provider.base_url, timeout=1.0),
                            llm_tenant_models=json.dumps({"*": [MODEL], "premium-" + backend: [MODEL, "gpt-4o"]}))
    async with LiveServer(Runtime(settings)) as server:
        yield server


@pytest.fixture
async def pg_live(ray_session, pg_url) -> AsyncIterator[LiveServer]:
    """`live` on PostgreSQL only."""
    async with LiveServer(Runtime(settings_for(pg_url, "postgresql"))) as server:
        yield server


@pytest.fixture
async def pg_flows(ray_session, pg_url) -> AsyncIterator[LiveServer]:
    """`flows` on PostgreSQL only."""
    settings = settings_for(pg_url, "postgresql", actor_prefix="test-postgresql-fl-", flow_limit=3, llm_latency=LATENCY)
    async with LiveServer(Runtime(settings)) as server:
        yield server


NEEDS_SERVICES = {"ray_session", "pg_url", "sqlite_url"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if NEEDS_SERVICES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
