"""Small WebSocket client helpers for the tests."""
from __future__ import annotations

import asyncio
import json
from typing import Any

import websockets

from serve_app.client import AsyncClient


async def connect(url: str, bearer: str | None = None, **params: Any):
    query = "&".join(f"{k}={v}" for k, v in params.items() if v is not None)
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    ws = await websockets.connect(url + (f"?{query}" if query else ""), additional_headers=headers, max_size=2**22)
    return ws


async def recv(ws, timeout: float = 10.0) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def recv_until(ws, predicate, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Messages received up to and including the first that satisfies `predicate`."""
    seen = []
    while True:
        message = await recv(ws, timeout)
        seen.append(message)
        if predicate(message):
            return seen


async def drain(ws, quiet: float = 0.5) -> list[dict[str, Any]]:
    """Everything that arrives until the socket has been quiet for `quiet` seconds."""
    seen = []
    while True:
        try:
            seen.append(json.loads(await asyncio.wait_for(ws.recv(), quiet)))
        except asyncio.TimeoutError:
            return seen


async def publish(base: str, headers: dict[str, str], events: list[dict[str, Any]]) -> list[int]:
    """The seqs of `events`, published through the typed client with the bearer in `headers`."""
    async with AsyncClient(base, headers["Authorization"].removeprefix("Bearer ")) as rt:
        return (await rt.events.publish(events))["seqs"]
