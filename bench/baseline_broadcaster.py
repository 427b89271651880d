"""The design raytenant replaces: one uvicorn process, sockets in a dict, broadcast in the request.

Used only as the baseline of bench/fanout.py. It keeps the original ConnectionManager's shape
(tenant -> connections, flow -> subscribers, await each send in turn) and assigns seqs in memory,
so nothing survives a restart and one process holds every socket.
"""
from __future__ import annotations

import contextlib

import itertools
import json
import sys
from collections import defaultdict

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from serve_app.auth import Tokens, bearer

tokens = Tokens(sys.argv[2] if len(sys.argv) > 2 else "bench-operator")
subscribers: dict[tuple[str, str], dict[int, WebSocket]] = defaultdict(dict)
seqs: dict[str, itertools.count] = defaultdict(lambda: itertools.count(1))
ids = itertools.count()


async def ws_endpoint(websocket: WebSocket) -> None:
    await websocket.accept()
    claims = tokens.verify(websocket.query_params.get("token") or bearer(websocket.headers.get("authorization")))
    flow = websocket.query_params.get("flow_id", "")
    me = next(ids)
    subscribers[(claims.tenant, flow)][me] = websocket
    await websocket.send_text(json.dumps({"type": "connection_established", "tenant": claims.tenant}))
    try:
        with contextlib.suppress(WebSocketDisconnect):  # reads until the client leaves
            while True:
                await websocket.receive_text()
    finally:
        subscribers[(claims.tenant, flow)].pop(me, None)


async def publish(request: Request) -> JSONResponse:
    claims = tokens.verify(bearer(request.headers.get("authorization")))
    body = await request.json()
    out = []
    for event in body.get("events", [body]):
        seq = next(seqs[claims.tenant])
        text = json.dumps({"type": event["type"], "seq": seq, "flow_id": event.get("flow_id"), "data": event.get("data", {})})
        for ws in list(subscribers[(claims.tenant, event.get("flow_id") or "")].values()):
            # The design this replaces: a send to a socket that just died is silently dropped.
            with contextlib.suppress(Exception):
                await ws.send_text(text)
        out.append(seq)
    return JSONResponse({"seqs": out}, status_code=201)


app = Starlette(routes=[Route("/v1/events", publish, methods=["POST"]), WebSocketRoute("/v1/ws", ws_endpoint)])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
