"""Helpers the HTTP tests share: error assertions, stored rows, flow bodies, waiting for a flow,
and the loopback provider's configuration."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
from typing import Any, Awaitable

import httpx
from sqlalchemy import select

from crews.samples import sample_inventory
from serve_app.client import AsyncClient, RaytenantError
from storage.engine import create_engine

SAMPLE = sample_inventory()
LATENCY = 0.15  # the OfflineLLM's simulated provider latency: long enough to act mid-flow
MODEL = "gpt-4o-mini"
KEY_ENV = "RAYTENANT_TEST_PROVIDER_KEY"
# The browser the page tests drive (.ci/run installs Debian's chromium where it can).
CHROMIUM = os.environ.get("RAYTENANT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    """A raw request's error answer: for bodies the typed client cannot send (malformed ones)."""
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert body["code"] == code and body["message"], (code, body)


async def refusal(call: Awaitable[Any]) -> tuple[int, str] | None:
    """The (status, code) a client call is refused with; None when it is answered (for polling)."""
    try:
        await call
    except RaytenantError as error:
        return error.status, error.code
    return None


async def refused(call: Awaitable[Any], status: int, code: str) -> RaytenantError:
    """A typed client call's error: `await refused(rt.costs.release("nope"), 404, "not_found")`."""
    try:
        answer = await call
    except RaytenantError as error:
        assert (error.status, error.code) == (status, code) and error.message, error
        return error
    raise AssertionError(f"expected {status} {code}, got the answer {answer!r}")


async def stored(db_url: str, table, tenant: str) -> list[dict]:
    engine = create_engine(db_url)
    try:
        async with engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(select(table).where(table.tenant == tenant))).mappings()]
    finally:
        await engine.dispose()


def flow_body(**changes: Any) -> dict[str, Any]:
    return {"name": "Sample inventory", "kind": "discovery", "data": SAMPLE["data"],
            "target_schema": SAMPLE["target_schema"], **changes}


async def wait_flow(rt: AsyncClient, flow_id: str, timeout: float = 90.0) -> dict[str, Any]:
    """The flow once it ended (completed, failed or cancelled)."""
    for _ in range(int(timeout / 0.2)):
        flow = await rt.flows.get(flow_id)
        if flow["status"] in ("completed", "failed", "cancelled"):
            return flow
        await asyncio.sleep(0.2)
    raise AssertionError(f"flow {flow_id} did not end: {flow}")


def providers_json(base_url: str, timeout: float = 5.0) -> str:
    return json.dumps({"loopback": {"base_url": base_url, "api_key_env": KEY_ENV, "models": [MODEL, "gpt-4o"],
                                    "timeout": timeout}})
