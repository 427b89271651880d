"""Helpers the HTTP tests share: error assertions, stored rows, flow bodies, waiting for a flow,
and the loopback provider's configuration."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
from typing import Any

import httpx
from sqlalchemy import select

from crews.samples import sample_inventory
from storage.engine import create_engine

SAMPLE = sample_inventory()
LATENCY = 0.15  # the OfflineLLM's simulated provider latency: long enough to act mid-flow
MODEL = "gpt-4o-mini"
KEY_ENV = "RAYTENANT_TEST_PROVIDER_KEY"
# The browser the page tests drive (.ci/run installs Debian's chromium where it can).
CHROMIUM = os.environ.get("RAYTENANT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert body["code"] == code and body["message"], (code, body)


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


async def wait_flow(client: httpx.AsyncClient, auth: dict, flow_id: str, timeout: float = 90.0) -> dict[str, Any]:
    for _ in range(int(timeout / 0.2)):
        flow = (await client.get(f"/v1/flows/{flow_id}", headers=auth)).json()
        if flow["status"] in ("completed", "failed", "cancelled"):
            return flow
        await asyncio.sleep(0.2)
    raise AssertionError(f"flow {flow_id} did not end: {flow}")


def providers_json(base_url: str, timeout: float = 5.0) -> str:
    return json.dumps({"loopback": {"base_url": base_url, "api_key_env": KEY_ENV, "models": [MODEL, "gpt-4o"],
                                    "timeout": timeout}})
